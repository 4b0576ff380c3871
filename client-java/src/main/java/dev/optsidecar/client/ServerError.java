package dev.optsidecar.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;

import java.util.Map;
import java.util.OptionalLong;

/**
 * What the server says about a failed call, read from the status details it attaches (the
 * standard google.rpc.Status with an ErrorInfo and, for bad input, a BadRequest) rather than from
 * the English message: {@code ServerError.of(e).reason()} is stable across releases, the message
 * is not. README, "Errors", lists the reasons with their codes and metadata.
 *
 * @param code     the gRPC status code
 * @param reason   the server's reason, e.g. {@link #STALE_GRADIENT}; "" when the status carries none
 *                 (a failure of the connection rather than the server's answer)
 * @param field    the request field at fault, e.g. {@code spec.optimizer.hyperparameters.lr}; "" if none
 * @param metadata values to act on, e.g. {@code model}, {@code current_version}; empty if none
 * @param message  the status description, for people
 */
public record ServerError(Status.Code code, String reason, String field, Map<String, String> metadata,
                          String message) {
    /** ErrorInfo.domain of the server's errors. */
    public static final String DOMAIN = "optsidecar.dev";

    public static final String INVALID_FIELD = "INVALID_FIELD";
    public static final String NON_FINITE_GRADIENT = "NON_FINITE_GRADIENT";
    public static final String BASE_VERSION_AHEAD = "BASE_VERSION_AHEAD";
    public static final String MODEL_NOT_FOUND = "MODEL_NOT_FOUND";
    public static final String SNAPSHOT_NOT_FOUND = "SNAPSHOT_NOT_FOUND";
    public static final String MODEL_EXISTS = "MODEL_EXISTS";
    public static final String STALE_GRADIENT = "STALE_GRADIENT";
    public static final String INCOMPLETE_DATA = "INCOMPLETE_DATA";
    public static final String STEP_OUT_OF_ORDER = "STEP_OUT_OF_ORDER";
    public static final String EMA_NOT_READY = "EMA_NOT_READY";
    public static final String NO_STATE_DIR = "NO_STATE_DIR";
    public static final String SYNC_STEP_OPEN = "SYNC_STEP_OPEN";
    public static final String PRECONDITION_FAILED = "PRECONDITION_FAILED";
    public static final String SHARED_MEMORY_UNAVAILABLE = "SHARED_MEMORY_UNAVAILABLE";
    public static final String SHARED_MEMORY_FAULT = "SHARED_MEMORY_FAULT";
    public static final String WEIGHTS_EDITED = "WEIGHTS_EDITED";
    public static final String CUDA_IPC_UNAVAILABLE = "CUDA_IPC_UNAVAILABLE";
    public static final String MEMORY_LIMIT = "MEMORY_LIMIT";
    public static final String OUT_OF_MEMORY = "OUT_OF_MEMORY";
    public static final String NOT_IMPLEMENTED = "NOT_IMPLEMENTED";
    public static final String STEP_REPLACED = "STEP_REPLACED";
    public static final String MODEL_CHANGED = "MODEL_CHANGED";
    public static final String SHUTTING_DOWN = "SHUTTING_DOWN";
    public static final String CORRUPT_DATA = "CORRUPT_DATA";
    public static final String TOKEN_MISSING = "TOKEN_MISSING";
    public static final String TOKEN_UNKNOWN = "TOKEN_UNKNOWN";
    public static final String TOKEN_OVER_PLAINTEXT = "TOKEN_OVER_PLAINTEXT";
    public static final String ACCESS_DENIED = "ACCESS_DENIED";
    public static final String IO_ERROR = "IO_ERROR";
    public static final String INTERNAL_ERROR = "INTERNAL_ERROR";

    public ServerError {
        metadata = Map.copyOf(metadata);
    }

    /**
     * The server's error behind {@code t} (a StatusRuntimeException or StatusException, or one
     * wrapping it); code UNKNOWN and no reason for a throwable that carries no status.
     */
    public static ServerError of(Throwable t) {
        Status status = Status.fromThrowable(t);
        com.google.rpc.Status details = StatusProto.fromThrowable(t);
        String reason = "";
        String field = "";
        Map<String, String> metadata = Map.of();
        if (details != null) {
            for (Any any : details.getDetailsList()) {
                try {
                    if (any.is(ErrorInfo.class)) {
                        ErrorInfo info = any.unpack(ErrorInfo.class);
                        reason = info.getReason();
                        metadata = info.getMetadataMap();
                        field = field.isEmpty() ? metadata.getOrDefault("field", "") : field;
                    } else if (any.is(BadRequest.class)) {
                        BadRequest bad = any.unpack(BadRequest.class);
                        if (bad.getFieldViolationsCount() > 0) {
                            field = bad.getFieldViolations(0).getField();
                        }
                    }
                } catch (InvalidProtocolBufferException e) {
                    // A detail that does not parse tells nothing; the status code still stands.
                }
            }
        }
        String message = status.getDescription() != null ? status.getDescription() : "";
        return new ServerError(status.getCode(), reason, field, metadata, message);
    }

    /** Whether the server gave this reason. */
    public boolean is(String reason) {
        return this.reason.equals(reason);
    }

    /** A metadata value as a number, e.g. {@code longValue("current_version")} of a stale gradient. */
    public OptionalLong longValue(String key) {
        String v = metadata.get(key);
        if (v == null) {
            return OptionalLong.empty();
        }
        try {
            return OptionalLong.of(Long.parseUnsignedLong(v));
        } catch (NumberFormatException e) {
            return OptionalLong.empty();
        }
    }
}
