package dev.optsidecar.server;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A request the server refuses, with the gRPC status it maps to and a message that names the
 * field or tensor at fault. Domain code throws these; the api layer turns them into a Status
 * whose details carry a machine-readable {@link Reason}, the field and metadata, so clients need
 * not parse the message.
 */
public final class OptError extends RuntimeException {
    /** Mirrors the gRPC codes the server uses, so domain code needs no gRPC types. */
    public enum Kind {
        INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNIMPLEMENTED, ABORTED,
        UNAVAILABLE, DATA_LOSS, INTERNAL, UNAUTHENTICATED, PERMISSION_DENIED
    }

    /**
     * Why a request was refused: the stable {@code ErrorInfo.reason} clients branch on (README,
     * "Errors", lists them with their codes and metadata). Each kind has a default; call sites
     * that clients need to tell apart set a more specific one.
     */
    public enum Reason {
        /** INVALID_ARGUMENT: a bad value, shape, size, offset, name or option; the field says which. */
        INVALID_FIELD,
        /** INVALID_ARGUMENT: a gradient with NaN or Inf under the reject policy. */
        NON_FINITE_GRADIENT,
        /** INVALID_ARGUMENT: commit.base_version is ahead of the model (metadata current_version). */
        BASE_VERSION_AHEAD,
        /** NOT_FOUND: no model of that name (never registered, deleted, or lost in a restart). */
        MODEL_NOT_FOUND,
        /** NOT_FOUND: no such snapshot or file in the state directory. */
        SNAPSHOT_NOT_FOUND,
        /** ALREADY_EXISTS: a model of that name is registered already. */
        MODEL_EXISTS,
        /** FAILED_PRECONDITION: an async gradient past the staleness bound (metadata current_version...). */
        STALE_GRADIENT,
        /** FAILED_PRECONDITION: a commit, initial weights or state with elements missing. */
        INCOMPLETE_DATA,
        /** FAILED_PRECONDITION: a step id out of order for its client or stream. */
        STEP_OUT_OF_ORDER,
        /** FAILED_PRECONDITION: an EMA view before the shadow's first update. */
        EMA_NOT_READY,
        /** FAILED_PRECONDITION: snapshots asked of a server started without --state-dir. */
        NO_STATE_DIR,
        /** FAILED_PRECONDITION: weights set while contributions to a sync step are waiting. */
        SYNC_STEP_OPEN,
        /** FAILED_PRECONDITION: any other state that does not allow the request. */
        PRECONDITION_FAILED,
        /** FAILED_PRECONDITION: shared memory asked of a server without --shm-dir, or a segment it cannot map. */
        SHARED_MEMORY_UNAVAILABLE,
        /** FAILED_PRECONDITION: a mapped segment shrank, vanished or failed while the server read or wrote it. */
        SHARED_MEMORY_FAULT,
        /** FAILED_PRECONDITION: a segment's weights differ from what the trainer recorded (metadata tensors). */
        WEIGHTS_EDITED,
        /** FAILED_PRECONDITION: CUDA IPC asked of a server whose engine is not cuda, or a handle it cannot open. */
        CUDA_IPC_UNAVAILABLE,
        /** RESOURCE_EXHAUSTED: the model would exceed --memory-limit (metadata limit, needed, free). */
        MEMORY_LIMIT,
        /** RESOURCE_EXHAUSTED: the JVM heap ran out. */
        OUT_OF_MEMORY,
        /** UNIMPLEMENTED: the server does not implement what was asked. */
        NOT_IMPLEMENTED,
        /** ABORTED: the step stopped being assembled because a retry of it replaced it. */
        STEP_REPLACED,
        /** ABORTED: the model's tensors changed (AddTensors) while the stream or request was on it; reopen it. */
        MODEL_CHANGED,
        /** UNAVAILABLE: the server is shutting down; retry when it is back. */
        SHUTTING_DOWN,
        /** DATA_LOSS: a snapshot or journal failed verification. */
        CORRUPT_DATA,
        /** UNAUTHENTICATED: the server checks tokens and the call carried none (or not as a bearer token). */
        TOKEN_MISSING,
        /** UNAUTHENTICATED: no token of the server's --auth-tokens file has this digest. */
        TOKEN_UNKNOWN,
        /** UNAUTHENTICATED: a token sent in plaintext over TCP from an address that is not loopback. */
        TOKEN_OVER_PLAINTEXT,
        /** PERMISSION_DENIED: the token's role or models do not allow the call (metadata model, required_role...). */
        ACCESS_DENIED,
        /** INTERNAL: an I/O error on the server. */
        IO_ERROR,
        /** INTERNAL: an unexpected server error. */
        INTERNAL_ERROR;

        static Reason defaultFor(Kind kind) {
            return switch (kind) {
                case INVALID_ARGUMENT -> INVALID_FIELD;
                case NOT_FOUND -> MODEL_NOT_FOUND;
                case ALREADY_EXISTS -> MODEL_EXISTS;
                case FAILED_PRECONDITION -> PRECONDITION_FAILED;
                case RESOURCE_EXHAUSTED -> MEMORY_LIMIT;
                case UNIMPLEMENTED -> NOT_IMPLEMENTED;
                case ABORTED -> STEP_REPLACED;
                case UNAVAILABLE -> SHUTTING_DOWN;
                case DATA_LOSS -> CORRUPT_DATA;
                case INTERNAL -> IO_ERROR;
                case UNAUTHENTICATED -> TOKEN_UNKNOWN;
                case PERMISSION_DENIED -> ACCESS_DENIED;
            };
        }
    }

    /**
     * A field path at the start of a message: {@code spec.optimizer.hyperparameters.lr},
     * {@code commit.group_lr[head]}, {@code spec.tensors[2].shape[0]}.
     */
    private static final Pattern FIELD_PREFIX =
            Pattern.compile("^[A-Za-z_][A-Za-z0-9_]*(?:\\.[A-Za-z_][A-Za-z0-9_]*|\\[[^\\]]*\\])*");

    private final Kind kind;
    private final Reason reason;
    private final String field;
    private final Map<String, String> metadata;

    private OptError(Kind kind, String message) {
        this(kind, message, null);
    }

    private OptError(Kind kind, String message, Throwable cause) {
        this(kind, message, cause, Reason.defaultFor(kind), fieldOf(message), Map.of());
    }

    private OptError(Kind kind, String message, Throwable cause, Reason reason, String field,
                     Map<String, String> metadata) {
        super(message, cause, false, false);
        this.kind = kind;
        this.reason = reason;
        this.field = field;
        this.metadata = metadata;
    }

    public Kind kind() {
        return kind;
    }

    public Reason reason() {
        return reason;
    }

    /** The field path at fault, or "" when the error is not about one field. */
    public String field() {
        return field;
    }

    /** Values a client may act on, such as {@code model} or {@code current_version}; unmodifiable. */
    public Map<String, String> metadata() {
        return metadata;
    }

    /** This error with another reason. */
    public OptError withReason(Reason reason) {
        return new OptError(kind, getMessage(), getCause(), reason, field, metadata);
    }

    /** This error naming {@code field} as the one at fault, rather than what its message starts with. */
    public OptError withField(String field) {
        return new OptError(kind, getMessage(), getCause(), reason, field, metadata);
    }

    /** This error with one more metadata entry ({@code value} as a string). */
    public OptError with(String key, Object value) {
        Map<String, String> m = new LinkedHashMap<>(metadata);
        m.put(key, String.valueOf(value));
        return new OptError(kind, getMessage(), getCause(), reason, field, Collections.unmodifiableMap(m));
    }

    /**
     * The field a message names by starting with its path: {@code "spec.name: ..."}, or a dotted
     * path followed by more words ({@code "chunk.data for tensor 'w': ..."}). A single word counts
     * only right before the colon, so {@code "step 7: ..."} or {@code "model 'm': ..."} name none.
     */
    static String fieldOf(String message) {
        if (message == null) {
            return "";
        }
        Matcher m = FIELD_PREFIX.matcher(message);
        if (!m.lookingAt()) {
            return "";
        }
        String path = m.group();
        String rest = message.substring(m.end());
        if (rest.startsWith(": ") || rest.equals(":")) {
            return path;
        }
        boolean dotted = path.indexOf('.') >= 0 || path.indexOf('[') >= 0;
        return dotted && rest.startsWith(" ") ? path : "";
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

    /** The call carries no token the server accepts. */
    public static OptError unauthenticated(String format, Object... args) {
        return new OptError(Kind.UNAUTHENTICATED, String.format(format, args));
    }

    /** The caller's token does not allow what it asked. */
    public static OptError permissionDenied(String format, Object... args) {
        return new OptError(Kind.PERMISSION_DENIED, String.format(format, args));
    }

    /** A server-side failure such as an I/O error, with its cause. */
    public static OptError internal(Throwable cause, String format, Object... args) {
        return new OptError(Kind.INTERNAL, String.format(format, args), cause);
    }
}
