package dev.optsidecar.server.engine.cuda;

/** A CUDA runtime call failed; the message names the call and the CUDA error. */
public final class CudaException extends RuntimeException {
    public CudaException(String message) {
        super(message);
    }
}
