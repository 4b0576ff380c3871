package dev.optsidecar.server;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import org.junit.jupiter.api.function.Executable;

import java.util.Optional;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A call's status code, a description that names the field, tensor or model at fault, and the
 * error details (google.rpc.Status) that carry the same for programs.
 */
public final class StatusAssertions {
    private StatusAssertions() {}

    /**
     * Runs {@code call}, which must fail with {@code code}, and checks that the description
     * contains every fragment.
     */
    public static Status assertStatus(Status.Code code, Executable call, String... fragments) {
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class, call);
        assertStatus(code, e.getStatus(), fragments);
        return e.getStatus();
    }

    public static void assertStatus(Status.Code code, Status status, String... fragments) {
        assertEquals(code, status.getCode(), () -> "status " + status);
        String description = status.getDescription();
        assertNotNull(description, () -> "status " + status + " has no description");
        for (String f : fragments) {
            assertTrue(description.contains(f),
                    () -> "description does not name '" + f + "': " + status.getCode() + ": " + description);
        }
    }

    /** The error details of a status and its trailers; fails if there are none or they disagree with it. */
    public static com.google.rpc.Status details(Status status, Metadata trailers) {
        com.google.rpc.Status details = StatusProto.fromStatusAndTrailers(status, trailers);
        assertNotNull(details, () -> "status " + status + " carries no error details");
        assertEquals(status.getCode().value(), details.getCode(), () -> "details of " + status);
        assertEquals(status.getDescription(), details.getMessage(), () -> "details of " + status);
        return details;
    }

    /** The ErrorInfo among the details, checked to have a reason and the server's domain. */
    public static ErrorInfo errorInfo(com.google.rpc.Status details) {
        ErrorInfo info = unpack(details, ErrorInfo.class)
                .orElseThrow(() -> new AssertionError("no ErrorInfo in " + details));
        assertFalse(info.getReason().isEmpty(), () -> "ErrorInfo without a reason: " + details);
        assertTrue(info.getReason().matches("[A-Z][A-Z0-9_]*"), () -> "reason not UPPER_SNAKE: " + info.getReason());
        assertEquals("optsidecar.dev", info.getDomain(), () -> "domain of " + details);
        return info;
    }

    /** The BadRequest among the details, if any. */
    public static Optional<BadRequest> badRequest(com.google.rpc.Status details) {
        return unpack(details, BadRequest.class);
    }

    private static <T extends com.google.protobuf.Message> Optional<T> unpack(com.google.rpc.Status details,
                                                                             Class<T> type) {
        for (Any any : details.getDetailsList()) {
            if (any.is(type)) {
                try {
                    return Optional.of(any.unpack(type));
                } catch (InvalidProtocolBufferException e) {
                    throw new AssertionError("a " + type.getSimpleName() + " detail does not parse", e);
                }
            }
        }
        return Optional.empty();
    }
}
