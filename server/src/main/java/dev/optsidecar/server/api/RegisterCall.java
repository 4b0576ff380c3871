package dev.optsidecar.server.api;

import dev.optsidecar.server.observe.LogEvent;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.StateChunk;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.PendingModel;
import io.grpc.stub.StreamObserver;

import java.util.logging.Logger;

/** One Register stream: the spec, then the initial weights; the model appears only when complete. */
final class RegisterCall implements StreamObserver<RegisterRequest> {
    private static final Logger LOG = Logger.getLogger(RegisterCall.class.getName());
    private final ModelRegistry registry;
    private final Persistence persistence;
    private final StreamObserver<ModelInfo> out;
    private PendingModel pending;
    private boolean ended;
    /** Ends the stream when the client goes silent: a vanished client gives its reservation back. */
    private final IdleStream idle;

    RegisterCall(ModelRegistry registry, Persistence persistence, StreamObserver<ModelInfo> out) {
        this.registry = registry;
        this.persistence = persistence;
        this.out = out;
        synchronized (this) {
            idle = new IdleStream(registry, this, () -> ended, timeout -> fail(io.grpc.Status.DEADLINE_EXCEEDED
                    .withDescription("idle Register stream: nothing received from the client for " + timeout
                            + " (--idle-stream-timeout); the registration is dropped").asRuntimeException()));
        }
    }

    @Override
    public synchronized void onNext(RegisterRequest request) {
        idle.active();
        if (ended) {
            return;
        }
        try {
            switch (request.getKindCase()) {
                case SPEC -> {
                    if (pending != null) {
                        throw OptError.invalid("spec: sent twice in one Register stream");
                    }
                    pending = registry.prepare(request.getSpec());
                }
                case WEIGHTS -> {
                    if (pending == null) {
                        throw OptError.invalid("spec: the first Register message must carry the model spec");
                    }
                    WeightsChunk c = request.getWeights();
                    pending.addWeights(c.getTensor(), c.getOffset(), c.getData().asReadOnlyByteBuffer());
                }
                case STATE -> {
                    if (pending == null) {
                        throw OptError.invalid("spec: the first Register message must carry the model spec");
                    }
                    StateChunk c = request.getState();
                    pending.addState(c.getTensor(), c.getSlot(), c.getOffset(), c.getData().asReadOnlyByteBuffer());
                }
                default -> throw OptError.invalid("kind: empty RegisterRequest");
            }
        } catch (RuntimeException | Error e) {
            fail(e);
        }
    }

    @Override
    public synchronized void onError(Throwable t) {
        ended = true;
        discard();
    }

    @Override
    public synchronized void onCompleted() {
        if (ended) {
            return;
        }
        ended = true; // from here the stream ends either way: the idle check has nothing left to close
        try {
            if (pending == null) {
                throw OptError.invalid("spec: Register stream ended without a model spec");
            }
            Model model = pending.publish();
            pending = null;
            if (persistence != null) {
                try {
                    persistence.adopt(model, "register"); // the model is durable before it is acknowledged
                } catch (RuntimeException e) {
                    registry.delete(model.name(), "spec.name");
                    throw e;
                }
            }
            ModelInfo info = model.describe();
            LogEvent.info(LOG, "register", model.name(), () -> String.format(
                    "model '%s': registered (%s, %d tensors, %d bytes) at version %d", model.name(),
                    model.spec().getOptimizer().getAlgorithm(), model.tensorCount(), model.memoryBytes(),
                    model.version()), "algorithm", model.spec().getOptimizer().getAlgorithm(),
                    "tensors", model.tensorCount(), "bytes", model.memoryBytes(), "version", model.version());
            out.onNext(info);
            out.onCompleted();
        } catch (RuntimeException e) {
            fail(e);
        }
    }

    private void fail(Throwable e) {
        ended = true;
        discard();
        out.onError(Statuses.toStatus(e));
    }

    private void discard() {
        if (pending != null) {
            pending.discard();
            pending = null;
        }
    }
}
