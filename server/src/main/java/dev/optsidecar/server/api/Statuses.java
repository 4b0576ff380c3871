package dev.optsidecar.server.api;

import dev.optsidecar.server.OptError;
import dev.optsidecar.server.snapshot.CorruptSnapshotException;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;

import java.io.IOException;
import java.nio.file.NoSuchFileException;
import java.util.logging.Level;
import java.util.logging.Logger;

/** The one place where domain errors become gRPC statuses. */
final class Statuses {
    private static final Logger LOG = Logger.getLogger(Statuses.class.getName());

    private Statuses() {}

    static StatusRuntimeException toStatus(Throwable t) {
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
            };
            if (e.getCause() != null) {
                LOG.log(Level.WARNING, e.getMessage(), e.getCause());
            }
            return Status.fromCode(code).withDescription(e.getMessage()).asRuntimeException();
        }
        if (t instanceof CorruptSnapshotException e) {
            return Status.DATA_LOSS.withDescription(e.getMessage()).asRuntimeException();
        }
        if (t instanceof NoSuchFileException e) {
            return Status.NOT_FOUND.withDescription(e.getReason() != null ? e.getReason() : e.getMessage())
                    .asRuntimeException();
        }
        if (t instanceof IOException e) {
            LOG.log(Level.WARNING, "I/O error while serving a request", e);
            return Status.INTERNAL.withDescription("I/O error: " + e.getMessage()).asRuntimeException();
        }
        if (t instanceof OutOfMemoryError) {
            LOG.log(Level.WARNING, "out of memory while serving a request", t);
            return Status.RESOURCE_EXHAUSTED.withDescription("server out of memory: " + t.getMessage())
                    .asRuntimeException();
        }
        LOG.log(Level.SEVERE, "unexpected error while serving a request", t);
        return Status.INTERNAL.withDescription("internal error: " + t).withCause(t).asRuntimeException();
    }
}
