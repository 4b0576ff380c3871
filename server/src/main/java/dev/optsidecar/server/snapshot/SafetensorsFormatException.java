package dev.optsidecar.server.snapshot;

import java.io.IOException;

/** A file is not a safetensors file this package can read: a bad header, dtype or layout. */
public final class SafetensorsFormatException extends IOException {
    public SafetensorsFormatException(String message) {
        super(message);
    }
}
