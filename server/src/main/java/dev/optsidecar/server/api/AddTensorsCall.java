package dev.optsidecar.server.api;

import dev.optsidecar.server.observe.LogEvent;
import dev.optsidecar.proto.v1.AddTensorsRequest;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.TensorAddition;
import io.grpc.stub.StreamObserver;

import java.util.function.Consumer;
import java.util.logging.Logger;

/**
 * One AddTensors stream: the spec (model, new tensors, their group), then the new tensors' initial
 * weights; the extended model takes the model's place only when they are complete. With a state
 * directory it is snapshotted before it does, so its journal holds only steps of the new shape.
 */
final class AddTensorsCall implements StreamObserver<AddTensorsRequest> {
    private static final Logger LOG = Logger.getLogger(AddTensorsCall.class.getName());
    private final ModelRegistry registry;
    private final Persistence persistence;
    private final StreamObserver<ModelInfo> out;
    /** Ends the Step streams still open on a model that was replaced. */
    private final Consumer<Model> endStreams;
    private TensorAddition addition;
    private boolean ended;
    /** Ends the stream when the client goes silent: a vanished client gives its reservation back. */
    private final IdleStream idle;

    AddTensorsCall(ModelRegistry registry, Persistence persistence, StreamObserver<ModelInfo> out,
                   Consumer<Model> endStreams) {
        this.registry = registry;
        this.persistence = persistence;
        this.out = out;
        this.endStreams = endStreams;
        synchronized (this) {
            idle = new IdleStream(registry, this, () -> ended, timeout -> fail(io.grpc.Status.DEADLINE_EXCEEDED
                    .withDescription("idle AddTensors stream: nothing received from the client for " + timeout
                            + " (--idle-stream-timeout); the new tensors are dropped").asRuntimeException()));
        }
    }

    @Override
    public synchronized void onNext(AddTensorsRequest request) {
        idle.active();
        if (ended) {
            return;
        }
        try {
            switch (request.getKindCase()) {
                case SPEC -> {
                    if (addition != null) {
                        throw OptError.invalid("spec: sent twice in one AddTensors stream");
                    }
                    addition = TensorAddition.prepare(registry, request.getSpec());
                }
                case WEIGHTS -> {
                    if (addition == null) {
                        throw OptError.invalid("spec: the first AddTensors message must carry the spec");
                    }
                    WeightsChunk c = request.getWeights();
                    addition.addWeights(c.getTensor(), c.getOffset(), c.getData().asReadOnlyByteBuffer());
                }
                default -> throw OptError.invalid("kind: empty AddTensorsRequest");
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
        ended = true;
        try {
            if (addition == null) {
                throw OptError.invalid("spec: AddTensors stream ended without a spec");
            }
            TensorAddition a = addition;
            Model previous = a.previous();
            Model extended = a.publish(durability()); // on failure, fail() gives everything back
            addition = null;
            if (persistence != null) {
                persistence.retired(previous);
            }
            endStreams.accept(previous);
            ModelInfo info = extended.describe();
            LogEvent.info(LOG, "add_tensors", extended.name(), () -> String.format("model '%s': %d tensors added as"
                    + " group '%s' (now %d tensors, %d bytes) at version %d", extended.name(),
                    extended.tensorCount() - previous.tensorCount(), a.group(), extended.tensorCount(),
                    extended.memoryBytes(), extended.version()), "group", a.group(), "tensors", extended.tensorCount(),
                    "bytes", extended.memoryBytes(), "version", extended.version());
            out.onNext(info);
            out.onCompleted();
        } catch (RuntimeException e) {
            fail(e);
        }
    }

    /** With a state directory, the extended model's first snapshot is written before it is visible. */
    private TensorAddition.Durability durability() {
        if (persistence == null) {
            return TensorAddition.Durability.NONE;
        }
        return new TensorAddition.Durability() {
            @Override
            public void adopt(Model extended) {
                persistence.adopt(extended, "add_tensors");
            }

            @Override
            public void abandon(Model extended) {
                persistence.retired(extended);
            }
        };
    }

    private void fail(Throwable e) {
        ended = true;
        discard();
        out.onError(Statuses.toStatus(e));
    }

    private void discard() {
        if (addition != null) {
            addition.discard();
            addition = null;
        }
    }
}
