package dev.optsidecar.server.api;

import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import dev.optsidecar.proto.v1.DoorbellError;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.snapshot.CorruptSnapshotException;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;

import java.io.IOException;
import java.nio.file.NoSuchFileException;
import java.util.Map;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The one place where domain errors become gRPC statuses. Each carries the rich error model's
 * details (google.rpc.Status in the grpc-status-details-bin trailer): an ErrorInfo with the
 * {@link OptError.Reason}, and for INVALID_ARGUMENT a BadRequest naming the field.
 */
public final class Statuses {
    private static final Logger LOG = Logger.getLogger(Statuses.class.getName());
    /** ErrorInfo.domain of every error this server makes. */
    static final String DOMAIN = "optsidecar.dev";

    private Statuses() {}

    /** The status (with its details in the trailers) that a call failing with {@code t} ends with. */
    public static StatusRuntimeException toStatus(Throwable t) {
        if (t instanceof StatusRuntimeException s) {
            return s;
        }
        if (t instanceof OptError e) {
            Status.Code code = switch (e.kind()) {
                case INVALID_ARGUMENT -> Status.Code.INVALID_ARGUMENT;
                case NOT_FOUND -> Status.Code.NOT_FOUND;
                case ALREADY_EXISTS -> Status.Code.ALREADY_EXISTS;
                case FAILED_PRECONDITION -> Status.Code.FAILED_PRECONDITION;
                case RESOURCE_EXHAUSTED -> Status.Code.RESOURCE_EXHAUSTED;
                case UNIMPLEMENTED -> Status.Code.UNIMPLEMENTED;
                case ABORTED -> Status.Code.ABORTED;
                case UNAVAILABLE -> Status.Code.UNAVAILABLE;
                case DATA_LOSS -> Status.Code.DATA_LOSS;
                case INTERNAL -> Status.Code.INTERNAL;
                case UNAUTHENTICATED -> Status.Code.UNAUTHENTICATED;
                case PERMISSION_DENIED -> Status.Code.PERMISSION_DENIED;
            };
            if (e.getCause() != null) {
                LOG.log(Level.WARNING, e.getMessage(), e.getCause());
            }
            return withDetails(code, e.getMessage(), e.reason(), e.field(), e.metadata(), null);
        }
        if (t instanceof CorruptSnapshotException e) {
            return withDetails(Status.Code.DATA_LOSS, e.getMessage(), OptError.Reason.CORRUPT_DATA, "", Map.of(), null);
        }
        if (t instanceof NoSuchFileException e) {
            return withDetails(Status.Code.NOT_FOUND, e.getReason() != null ? e.getReason() : e.getMessage(),
                    OptError.Reason.SNAPSHOT_NOT_FOUND, "", Map.of(), null);
        }
        if (t instanceof IOException e) {
            LOG.log(Level.WARNING, "I/O error while serving a request", e);
            return withDetails(Status.Code.INTERNAL, "I/O error: " + e.getMessage(), OptError.Reason.IO_ERROR, "",
                    Map.of(), null);
        }
        if (t instanceof OutOfMemoryError) {
            LOG.log(Level.WARNING, "out of memory while serving a request", t);
            return withDetails(Status.Code.RESOURCE_EXHAUSTED, "server out of memory: " + t.getMessage(),
                    OptError.Reason.OUT_OF_MEMORY, "", Map.of(), null);
        }
        LOG.log(Level.SEVERE, "unexpected error while serving a request", t);
        return withDetails(Status.Code.INTERNAL, "internal error: " + t, OptError.Reason.INTERNAL_ERROR, "", Map.of(),
                t);
    }

    /** The error frame that ends a doorbell with the status {@code t} ends its Step stream with. */
    public static DoorbellError toDoorbellError(Throwable t) {
        return doorbellError(toStatus(t));
    }

    /** The error frame that reports {@code e} on a doorbell. */
    static DoorbellError doorbellError(StatusRuntimeException e) {
        DoorbellError.Builder error = DoorbellError.newBuilder().setCode(e.getStatus().getCode().value());
        if (e.getStatus().getDescription() != null) {
            error.setMessage(e.getStatus().getDescription());
        }
        com.google.rpc.Status details = StatusProto.fromStatusAndTrailers(e.getStatus(), e.getTrailers());
        return error.setStatusDetails(details.toByteString()).build();
    }

    /**
     * A status with {@code message} as its description and the details clients read: ErrorInfo
     * (reason, domain, metadata, and the field when there is one) and, for INVALID_ARGUMENT with a
     * field, a BadRequest field violation.
     */
    static StatusRuntimeException withDetails(Status.Code code, String message, OptError.Reason reason, String field,
                                              Map<String, String> metadata, Throwable cause) {
        ErrorInfo.Builder info = ErrorInfo.newBuilder().setReason(reason.name()).setDomain(DOMAIN)
                .putAllMetadata(metadata);
        if (!field.isEmpty()) {
            info.putMetadata("field", field);
        }
        com.google.rpc.Status.Builder details = com.google.rpc.Status.newBuilder()
                .setCode(code.value())
                .setMessage(message == null ? "" : message)
                .addDetails(Any.pack(info.build()));
        if (code == Status.Code.INVALID_ARGUMENT && !field.isEmpty()) {
            details.addDetails(Any.pack(BadRequest.newBuilder()
                    .addFieldViolations(BadRequest.FieldViolation.newBuilder()
                            .setField(field)
                            .setDescription(message == null ? "" : message))
                    .build()));
        }
        StatusRuntimeException e = StatusProto.toStatusRuntimeException(details.build());
        return cause == null ? e : e.getStatus().withCause(cause).asRuntimeException(e.getTrailers());
    }
}
