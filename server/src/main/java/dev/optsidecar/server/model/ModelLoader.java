package dev.optsidecar.server.model;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.observe.Progress;
import dev.optsidecar.server.snapshot.SafetensorsFile;
import dev.optsidecar.server.snapshot.Snapshot;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.List;

/**
 * Builds models from saved or live state, through the same path as a Register that restores a
 * run: a snapshot read back from disk, or a fork of a live model. The result is complete but not
 * yet visible, so journaled steps can be replayed on it first.
 */
public final class ModelLoader {
    private static final java.util.logging.Logger LOG =
            java.util.logging.Logger.getLogger(ModelLoader.class.getName());
    private ModelLoader() {}

    /** Loads a verified snapshot under {@code name}; with {@code replacing}, a model of that name may exist. */
    public static PendingModel fromSnapshot(ModelRegistry registry, Snapshot snapshot, String name, boolean replacing)
            throws IOException {
        JsonNode meta = snapshot.modelMeta();
        ModelSpec.Builder savedSpec = ModelCapture.parse(meta.path("spec"), ModelSpec.newBuilder(), "spec");
        JsonNode savedState = ModelCapture.upgradeState(meta.path("state"), snapshot.formatVersion(),
                savedSpec.getOptimizer().getAlgorithm());
        ModelSpec spec = savedSpec.setName(name)
                .setState(ModelCapture.parse(savedState, ModelState.newBuilder(), "state")).build();
        SafetensorsFile weights = snapshot.file(ModelCapture.WEIGHTS_FILE);
        SafetensorsFile state = snapshot.file(ModelCapture.STATE_FILE);
        if (weights == null || state == null) {
            throw OptError.dataLoss("snapshot %s of model '%s' lacks %s", snapshot.id(), snapshot.info().getModel(),
                    weights == null ? ModelCapture.WEIGHTS_FILE : ModelCapture.STATE_FILE);
        }
        PendingModel pending = registry.prepare(spec, replacing);
        try {
            List<TensorEntry> tensors = pending.model().tensors();
            Progress progress = Progress.start(LOG, "load_snapshot", name, "loading snapshot " + snapshot.id()
                    + " of model '" + snapshot.info().getModel() + "'", "bytes", dataBytes(tensors, state));
            for (TensorEntry t : tensors) {
                if (!weights.tensors().containsKey(t.name)) {
                    throw OptError.dataLoss("snapshot %s: %s lacks tensor '%s'", snapshot.id(), ModelCapture.WEIGHTS_FILE, t.name);
                }
                weights.readAll(t.name, (offset, data) -> {
                    progress.advance(data.remaining());
                    pending.addWeights(t.index, offset, data);
                });
                for (String slot : t.slots) {
                    String key = t.name + "/" + slot;
                    if (state.tensors().containsKey(key)) {
                        state.readAll(key, (offset, data) -> {
                            progress.advance(data.remaining());
                            pending.addState(t.index, slot, offset, data);
                        });
                    }
                }
            }
            progress.finish();
            pending.model().setRun(meta.path("run").asText());
            pending.complete();
            return pending;
        } catch (IOException | RuntimeException e) {
            pending.discard();
            throw e;
        }
    }

    /** The float32 bytes a snapshot's tensors and their saved state slots hold. */
    private static long dataBytes(List<TensorEntry> tensors, SafetensorsFile state) {
        long bytes = 0;
        for (TensorEntry t : tensors) {
            bytes += t.numel * Float.BYTES;
            for (String slot : t.slots) {
                bytes += state.tensors().containsKey(t.name + "/" + slot) ? t.numel * Float.BYTES : 0;
            }
        }
        return bytes;
    }

    /**
     * A copy of a live model under a new name, with all its state and counters (not its clients'
     * sequence numbers: the branch is a new model). Optionally with another schedule, which
     * continues from the source's schedule position.
     */
    public static PendingModel fork(ModelRegistry registry, Model source, String name, Schedule schedule) {
        if (name.isEmpty()) {
            throw OptError.invalid("new_model: a name for the fork is required");
        }
        long stamp = source.readLock();
        PendingModel pending = null;
        try {
            source.checkLive();
            // A branch is named by its maker and kept: it does not inherit an ephemeral source's lease.
            ModelSpec.Builder spec = source.spec().toBuilder().setName(name).clearLeaseSeconds()
                    .setState(ModelDescription.of(source).getState().toBuilder().clearClients());
            if (schedule != null) {
                spec.getOptimizerBuilder().setSchedule(schedule);
            }
            pending = registry.prepare(spec.build());
            ByteBuffer chunk = ByteBuffer.allocate(StepAssembly.MAX_CHUNK_BYTES);
            for (TensorEntry from : source.tensors()) {
                PendingModel into = pending;
                copy(from.numel, chunk, (offset, count, dst) -> from.storage.readParams(offset, count, dst),
                        (offset, data) -> into.addWeights(from.index, offset, data));
                for (int s = 0; s < from.slots.size(); s++) {
                    int slot = s;
                    copy(from.numel, chunk, (offset, count, dst) -> from.storage.readSlot(slot, offset, count, dst),
                            (offset, data) -> into.addState(from.index, from.slots.get(slot), offset, data));
                }
            }
            pending.complete();
            return pending;
        } catch (RuntimeException e) {
            if (pending != null) {
                pending.discard();
            }
            throw e;
        } finally {
            source.unlockRead(stamp);
        }
    }

    static void copy(long numel, ByteBuffer chunk, dev.optsidecar.server.snapshot.TensorReader from,
                             dev.optsidecar.server.snapshot.TensorWriter to) {
        for (long offset = 0; offset < numel; ) {
            int count = (int) Math.min(chunk.capacity() / Float.BYTES, numel - offset);
            chunk.clear();
            from.read(offset, count, chunk);
            chunk.flip();
            to.write(offset, chunk);
            offset += count;
        }
    }

}
