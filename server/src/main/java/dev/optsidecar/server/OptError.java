package dev.optsidecar.server;

/**
 * A request the server refuses, with the gRPC status it maps to and a message that names the
 * field or tensor at fault. Domain code throws these; the api layer turns them into a Status.
 */
public final class OptError extends RuntimeException {
    /** Mirrors the gRPC codes the server uses, so domain code needs no gRPC types. */
    public enum Kind {
        INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNIMPLEMENTED, ABORTED,
        UNAVAILABLE, DATA_LOSS, INTERNAL
    }

    private final Kind kind;

    private OptError(Kind kind, String message) {
        this(kind, message, null);
    }

    private OptError(Kind kind, String message, Throwable cause) {
        super(message, cause, false, false);
        this.kind = kind;
    }

    public Kind kind() {
        return kind;
    }

    public static OptError invalid(String format, Object... args) {
        return new OptError(Kind.INVALID_ARGUMENT, String.format(format, args));
    }

    public static OptError notFound(String format, Object... args) {
        return new OptError(Kind.NOT_FOUND, String.format(format, args));
    }

    public static OptError alreadyExists(String format, Object... args) {
        return new OptError(Kind.ALREADY_EXISTS, String.format(format, args));
    }

    public static OptError precondition(String format, Object... args) {
        return new OptError(Kind.FAILED_PRECONDITION, String.format(format, args));
    }

    public static OptError exhausted(String format, Object... args) {
        return new OptError(Kind.RESOURCE_EXHAUSTED, String.format(format, args));
    }

    public static OptError unimplemented(String format, Object... args) {
        return new OptError(Kind.UNIMPLEMENTED, String.format(format, args));
    }

    public static OptError aborted(String format, Object... args) {
        return new OptError(Kind.ABORTED, String.format(format, args));
    }

    /** The server cannot serve this now (shutting down); the client may retry elsewhere or later. */
    public static OptError unavailable(String format, Object... args) {
        return new OptError(Kind.UNAVAILABLE, String.format(format, args));
    }

    /** Stored data is missing or corrupt. */
    public static OptError dataLoss(String format, Object... args) {
        return new OptError(Kind.DATA_LOSS, String.format(format, args));
    }

    /** A server-side failure such as an I/O error, with its cause. */
    public static OptError internal(Throwable cause, String format, Object... args) {
        return new OptError(Kind.INTERNAL, String.format(format, args), cause);
    }
}
