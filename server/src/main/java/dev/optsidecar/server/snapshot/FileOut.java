package dev.optsidecar.server.snapshot;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * One safetensors file to write: its name within the snapshot (like {@code weights.safetensors}),
 * its {@code __metadata__} strings and its tensors, in the order they are laid out.
 */
public record FileOut(String name, Map<String, String> metadata, List<TensorOut> tensors) {
    public FileOut {
        Objects.requireNonNull(name, "name");
        metadata = Collections.unmodifiableMap(new LinkedHashMap<>(metadata == null ? Map.of() : metadata));
        tensors = List.copyOf(tensors);
    }
}
