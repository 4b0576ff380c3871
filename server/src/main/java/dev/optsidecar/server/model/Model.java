package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.GroupInfo;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.TensorInfo;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.TensorStep;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.StampedLock;

/**
 * A registered model: ordered named tensors, parameter groups, one optimizer configuration and
 * the version (steps applied). Steps take the write lock; views are read under the read lock, so
 * a reader always sees whole steps. One step is assembled at a time, into the tensors' gradient
 * buffers.
 */
public final class Model {
    private final String name;
    private final OptimizerConfig config;
    private final List<TensorEntry> tensors;
    private final List<GroupState> groups;
    private final Engine engine;
    private final long memoryBytes;
    private final StampedLock lock = new StampedLock();
    private final AtomicReference<StepAssembly> assembling = new AtomicReference<>();
    private volatile long version;
    private volatile boolean deleted;

    Model(String name, OptimizerConfig config, List<TensorEntry> tensors, List<GroupState> groups,
          Engine engine, long memoryBytes) {
        this.name = name;
        this.config = config;
        this.tensors = Collections.unmodifiableList(tensors);
        this.groups = Collections.unmodifiableList(groups);
        this.engine = engine;
        this.memoryBytes = memoryBytes;
    }

    public String name() {
        return name;
    }

    public long version() {
        return version;
    }

    public long memoryBytes() {
        return memoryBytes;
    }

    public NonFinitePolicy nonFinitePolicy() {
        return config.getNonFinite();
    }

    public int tensorCount() {
        return tensors.size();
    }

    OptimizerConfig config() {
        return config;
    }

    List<TensorEntry> tensors() {
        return tensors;
    }

    List<GroupState> groups() {
        return groups;
    }

    /** The views this model serves. The algorithms of this version have only the train view. */
    public List<View> views() {
        return List.of(View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build());
    }

    /**
     * Resolves a requested view: unspecified means train; a view the algorithm lacks is
     * INVALID_ARGUMENT, never silently the train view.
     *
     * @return the resolved view, or null for VIEW_NONE when {@code allowNone}
     */
    public View resolveView(View requested, String field, boolean allowNone) {
        ViewKind kind = requested.getKind();
        if (kind == ViewKind.VIEW_KIND_UNSPECIFIED || kind == ViewKind.VIEW_TRAIN) {
            return View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build();
        }
        if (kind == ViewKind.VIEW_NONE && allowNone) {
            return null;
        }
        List<String> available = new ArrayList<>();
        for (View v : views()) {
            available.add(v.getKind().name());
        }
        throw OptError.invalid("%s: model '%s' (%s) has no %s view; available: %s", field, name,
                config.getAlgorithm(), kind == ViewKind.UNRECOGNIZED ? "such" : kind.name(),
                String.join(", ", available));
    }

    /**
     * Starts assembling a step. Only one step is assembled at a time, because its gradients are
     * written straight into the tensors' gradient buffers.
     */
    public StepAssembly openStep(long stepId) {
        checkLive();
        StepAssembly a = new StepAssembly(tensors, stepId);
        if (!assembling.compareAndSet(null, a)) {
            throw OptError.aborted("model '%s' is assembling another client's step; retry when it is done", name);
        }
        return a;
    }

    /**
     * The id of the step being assembled, if any: its chunks are arriving but it has not yet been
     * committed or abandoned. For diagnostics and tests; the answer may be stale by the time it is read.
     */
    public java.util.OptionalLong assemblingStep() {
        StepAssembly a = assembling.get();
        return a == null ? java.util.OptionalLong.empty() : java.util.OptionalLong.of(a.stepId());
    }

    /** Abandons an assembly; weights and state are untouched. */
    public void abandon(StepAssembly a) {
        assembling.compareAndSet(a, null);
    }

    /**
     * Copies one gradient chunk into place; returns a non-finite description when one arrived.
     * The copy runs under the read lock, so a Delete (which frees the buffers under the write lock)
     * cannot free them mid-copy, and a chunk for a model deleted mid-step is NOT_FOUND.
     */
    public String addChunk(StepAssembly a, int tensor, long offset, java.nio.ByteBuffer data) {
        checkLive();
        if (assembling.get() != a) {
            throw OptError.aborted("step %d of model '%s' is no longer being assembled", a.stepId(), name);
        }
        // tryReadLock first: it ignores queued writers, so a Delete waiting for this stream's own
        // weights transfer cannot block the stream. It fails only while a Delete holds the write lock
        // (a commit needs this assembly), which ends without waiting on anything, so blocking is safe.
        long stamp = lock.tryReadLock();
        if (stamp == 0) {
            stamp = lock.readLock();
        }
        try {
            checkLive();
            return a.add(tensor, offset, data);
        } finally {
            lock.unlockRead(stamp);
        }
    }

    /**
     * Validates and applies an assembled step, then opens the requested view of the result under
     * the read lock, so the weights streamed back are exactly those of the new version.
     *
     * @param noGrad    tensor indexes without a gradient this step
     * @param groupLr   new base learning rates by group name
     * @param view      resolved view to return, or null for none
     */
    public StepOutcome commit(StepAssembly a, List<Integer> noGrad, Map<String, Double> groupLr,
                              View view, NonFinitePolicy policy) {
        try {
            if (assembling.get() != a) {
                throw OptError.aborted("step %d of model '%s' is no longer being assembled", a.stepId(), name);
            }
            boolean[] skip = noGradMask(noGrad);
            a.checkComplete(skip);
            Map<GroupState, Double> newLr = resolveGroupLr(groupLr);
            long stamp = lock.writeLock();
            try {
                checkLive();
                boolean skipped = a.nonFinite() != null && policy == NonFinitePolicy.NON_FINITE_SKIP;
                if (!skipped) {
                    newLr.forEach((g, lr) -> g.baseLr = lr);
                }
                Map<GroupState, Double> stepLr = new LinkedHashMap<>();
                List<GroupLrUsed> lrs = new ArrayList<>(groups.size());
                for (GroupState g : groups) {
                    stepLr.put(g, lrFor(g));
                    lrs.add(new GroupLrUsed(g.name, stepLr.get(g)));
                }
                if (!skipped) {
                    List<TensorStep> steps = new ArrayList<>();
                    for (TensorEntry t : tensors) {
                        if (!skip[t.index]) {
                            steps.add(new TensorStep(t.storage, t.group.algorithm.step(t.steps + 1, stepLr.get(t.group))));
                        }
                    }
                    engine.apply(steps);
                    for (TensorEntry t : tensors) {
                        if (!skip[t.index]) {
                            t.steps++;
                        }
                    }
                    version++;
                }
                long readStamp = lock.tryConvertToReadLock(stamp);
                stamp = 0;
                ViewReader reader = view == null ? null : new ViewReader(this, view, version, readStamp);
                if (reader == null) {
                    lock.unlockRead(readStamp);
                }
                return new StepOutcome(version, skipped, lrs, reader);
            } finally {
                if (stamp != 0) {
                    lock.unlockWrite(stamp);
                }
            }
        } finally {
            assembling.compareAndSet(a, null);
        }
    }

    /** The learning rate a group uses for the next step. Schedules will scale the base lr here. */
    double lrFor(GroupState g) {
        return g.baseLr;
    }

    private boolean[] noGradMask(List<Integer> noGrad) {
        boolean[] mask = new boolean[tensors.size()];
        for (int i : noGrad) {
            if (i < 0 || i >= mask.length) {
                throw OptError.invalid("commit.no_grad: tensor index %d out of range; the model has %d tensors",
                        Integer.toUnsignedLong(i), mask.length);
            }
            mask[i] = true;
        }
        return mask;
    }

    private Map<GroupState, Double> resolveGroupLr(Map<String, Double> groupLr) {
        Map<GroupState, Double> out = new LinkedHashMap<>();
        for (Map.Entry<String, Double> e : groupLr.entrySet()) {
            GroupState g = groups.stream().filter(x -> x.name.equals(e.getKey())).findFirst().orElseThrow(() ->
                    OptError.invalid("commit.group_lr: model '%s' has no group '%s'", name, e.getKey()));
            double lr = e.getValue();
            if (!(lr >= 0) || Double.isInfinite(lr)) {
                throw OptError.invalid("commit.group_lr[%s]: learning rate must be finite and >= 0 (got %s)",
                        e.getKey(), lr);
            }
            out.put(g, lr);
        }
        return out;
    }

    /** Opens a view for reading under the read lock; the caller must close the reader. */
    public ViewReader read(View view) {
        long stamp = lock.readLock();
        try {
            checkLive();
        } catch (OptError e) {
            lock.unlockRead(stamp);
            throw e;
        }
        return new ViewReader(this, view, version, stamp);
    }

    /** The model's tensors, groups, configuration, version and current learning rates. */
    public ModelInfo describe() {
        return underReadLock(() -> {
            checkLive();
            ModelInfo.Builder b = ModelInfo.newBuilder()
                    .setName(name)
                    .setOptimizer(config)
                    .setVersion(version)
                    .addAllViews(views())
                    .setMemoryBytes(memoryBytes);
            long total = 0;
            for (TensorEntry t : tensors) {
                TensorInfo.Builder ti = TensorInfo.newBuilder()
                        .setName(t.name).setNumel(t.numel).setGroup(t.group.name).setSteps(t.steps);
                for (long d : t.shape) {
                    ti.addShape(d);
                }
                b.addTensors(ti);
                total += t.numel;
            }
            for (GroupState g : groups) {
                b.addGroups(GroupInfo.newBuilder()
                        .setName(g.name)
                        .setHyperparameters(g.hyperparameters.toStruct().toBuilder()
                                .putFields("lr", com.google.protobuf.Value.newBuilder().setNumberValue(g.baseLr).build()))
                        .setLr(lrFor(g)));
            }
            return b.setTotalElements(total).build();
        });
    }

    void unlockRead(long stamp) {
        lock.unlockRead(stamp);
    }

    /** Runs {@code reader} under the read lock and returns its result. */
    <T> T underReadLock(java.util.function.Supplier<T> reader) {
        long stamp = lock.readLock();
        try {
            return reader.get();
        } finally {
            lock.unlockRead(stamp);
        }
    }

    /** Marks the model deleted and frees its memory once no step or reader holds it. */
    void delete() {
        long stamp = lock.writeLock();
        try {
            deleted = true;
            for (TensorEntry t : tensors) {
                t.storage.free();
            }
        } finally {
            lock.unlockWrite(stamp);
        }
    }

    private void checkLive() {
        if (deleted) {
            throw OptError.notFound("model '%s' was deleted", name);
        }
    }

    /** The learning rate each group used in a step. */
    public record GroupLrUsed(String group, double lr) {}

    /** What a commit did. {@code weights} is null when no view was requested; else the caller closes it. */
    public record StepOutcome(long version, boolean skipped, List<GroupLrUsed> lr, ViewReader weights) {}
}
