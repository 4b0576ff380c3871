package dev.optsidecar.server.model;

import dev.optsidecar.server.observe.LogEvent;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.observe.ServerMetrics;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Consumer;
import java.util.logging.Logger;

/** The models this server holds, by name, and the memory they may use together. */
public final class ModelRegistry {
    private static final Logger LOG = Logger.getLogger(ModelRegistry.class.getName());
    private final Engine engine;
    private final long memoryLimit;
    /** The server's timer thread, for sync steps' straggler timeouts. */
    private final ScheduledExecutorService timers;
    private final Limits limits;
    private final AtomicLong reserved = new AtomicLong();
    /** Models being registered, restored or forked: each holds memory before it is visible. */
    private final AtomicInteger pendingRegistrations = new AtomicInteger();
    private final ConcurrentMap<String, Model> models = new ConcurrentHashMap<>();
    private final ModelLeases leases;
    /** Told of each model deleted because its lease expired, after it is freed (persistence marks it deleted). */
    private volatile Consumer<Model> onLeaseExpired = m -> {};
    /** Where models record what their steps did, and what /metrics reads. */
    private final ServerMetrics metrics;

    public ModelRegistry(Engine engine, long memoryLimitBytes, ScheduledExecutorService timers) {
        this(engine, memoryLimitBytes, timers, Limits.DEFAULTS);
    }

    public ModelRegistry(Engine engine, long memoryLimitBytes, ScheduledExecutorService timers, Limits limits) {
        this(engine, memoryLimitBytes, timers, limits, ServerMetrics.create());
    }

    public ModelRegistry(Engine engine, long memoryLimitBytes, ScheduledExecutorService timers, Limits limits,
                         ServerMetrics metrics) {
        this.engine = engine;
        this.memoryLimit = memoryLimitBytes;
        this.timers = timers;
        this.limits = limits;
        this.leases = new ModelLeases(timers);
        this.metrics = metrics;
        metrics.watch(reserved::get, memoryLimit, this::trainersByModel);
    }

    public ServerMetrics metrics() {
        return metrics;
    }

    /** Each loaded model's trainers attached now, by model name. */
    private java.util.Map<String, Integer> trainersByModel() {
        java.util.Map<String, Integer> out = new java.util.TreeMap<>();
        models.forEach((name, m) -> out.put(name, m.trainersAttached()));
        return out;
    }

    /** Sets what is told of each model whose lease expired, once it is deleted and freed. */
    public void onLeaseExpired(Consumer<Model> listener) {
        this.onLeaseExpired = listener;
    }

    public Limits limits() {
        return limits;
    }

    /** The server's timer thread: sync steps' straggler timeouts and idle Step streams. */
    public ScheduledExecutorService timers() {
        return timers;
    }

    public Engine engine() {
        return engine;
    }

    /** Validates a spec and allocates its memory; the model is visible only after {@link #publish}. */
    public PendingModel prepare(ModelSpec spec) {
        return prepare(spec, false);
    }

    /** As {@link #prepare(ModelSpec)}; with {@code replacing}, a model of that name may exist (see {@link PendingModel#publishReplacing}). */
    public PendingModel prepare(ModelSpec spec, boolean replacing) {
        if (!replacing && models.containsKey(spec.getName())) {
            throw OptError.alreadyExists("spec.name: model '%s' already exists", Echo.of(spec.getName()))
                    .withReason(OptError.Reason.MODEL_EXISTS).with("model", Echo.of(spec.getName()));
        }
        if (pendingRegistrations.incrementAndGet() > limits.maxPendingRegistrations()) {
            pendingRegistrations.decrementAndGet();
            throw OptError.exhausted("spec.name: %d registrations are under way, the server's limit (raise it with"
                    + " --max-pending-registrations); retry when one has finished", limits.maxPendingRegistrations());
        }
        try {
            return ModelFactory.build(spec, engine, this, timers);
        } catch (RuntimeException | Error e) {
            pendingRegistrations.decrementAndGet();
            throw e;
        }
    }

    /** A registration from {@link #prepare} was published or discarded. */
    void registrationEnded() {
        pendingRegistrations.decrementAndGet();
    }

    /** Registrations under way now. */
    public int pendingRegistrations() {
        return pendingRegistrations.get();
    }

    /** Reserves bytes against the memory limit, or fails with RESOURCE_EXHAUSTED. */
    void reserve(String model, long bytes) {
        if (bytes > memoryLimit) { // refused before the sum, which could wrap past Long.MAX_VALUE
            throw OptError.exhausted("model '%s' needs %d bytes, more than the server's %d-byte memory limit"
                    + " (see --memory-limit)", Echo.of(model), bytes, memoryLimit)
                    .withReason(OptError.Reason.MEMORY_LIMIT).with("model", Echo.of(model)).with("needed", bytes)
                    .with("free", Math.max(0, memoryLimit - reserved.get())).with("limit", memoryLimit);
        }
        long after = reserved.addAndGet(bytes);
        if (after > memoryLimit) {
            reserved.addAndGet(-bytes);
            throw OptError.exhausted("model '%s' needs %d bytes, but only %d of the server's %d-byte memory limit"
                    + " are free (see --memory-limit)", Echo.of(model), bytes, Math.max(0, memoryLimit - after + bytes), memoryLimit)
                    .withReason(OptError.Reason.MEMORY_LIMIT).with("model", Echo.of(model)).with("needed", bytes)
                    .with("free", Math.max(0, memoryLimit - after + bytes)).with("limit", memoryLimit);
        }
    }

    /**
     * Counts bytes (or gives them back, when negative) that must be kept whatever the limit: the
     * records of a step already applied. Their count is bounded by {@link Limits}, so the overshoot is too.
     */
    void account(long bytes) {
        reserved.addAndGet(bytes);
    }

    void release(long bytes) {
        reserved.addAndGet(-bytes);
    }

    /** Makes a fully initialised model visible under its name. */
    Model publish(Model model) {
        if (models.putIfAbsent(model.name(), model) != null) {
            throw OptError.alreadyExists("spec.name: model '%s' already exists", Echo.of(model.name()))
                    .withReason(OptError.Reason.MODEL_EXISTS).with("model", Echo.of(model.name()));
        }
        leases.started(model, this::expire);
        return model;
    }

    /** Makes a complete model visible, replacing a model of the same name, which is freed. */
    void replace(Model model) {
        Model old = models.put(model.name(), model);
        if (old != null) {
            leases.ended(old);
        }
        leases.started(model, this::expire);
        if (old != null) {
            old.delete();
            release(old.memoryBytes());
        }
    }

    /**
     * Puts {@code extended} in the place of {@code previous} (AddTensors), atomically: only while
     * {@code previous} is still the model of that name. The caller holds {@code previous}'s write
     * lock and retires it; its memory is given back here.
     */
    void swap(Model previous, Model extended) {
        if (!models.replace(previous.name(), previous, extended)) {
            throw changedMeanwhile(previous.name());
        }
        leases.ended(previous);
        leases.started(extended, this::expire);
        previous.retireChanged();
        release(previous.memoryBytes());
    }

    /** ABORTED: the model was replaced or deleted while tensors were being added to it. */
    static OptError changedMeanwhile(String name) {
        return OptError.aborted("spec.model: model '%s' was replaced or deleted while the new tensors were being"
                + " sent; send them again", Echo.of(name))
                .withReason(OptError.Reason.MODEL_CHANGED).with("model", Echo.of(name));
    }

    /** The model of that name, or null. */
    public Model find(String name) {
        return models.get(name);
    }

    public Model get(String name, String field) {
        if (name.isEmpty()) {
            throw OptError.invalid("%s: a model name is required", field);
        }
        Model m = models.get(name);
        if (m == null) {
            Long grace = leases.expiredGrace(name);
            if (grace != null) {
                throw OptError.notFound("%s: model '%s' was deleted because its lease expired (no RenewLease within"
                        + " its %d s grace period)", field, Echo.of(name), grace)
                        .withReason(OptError.Reason.MODEL_NOT_FOUND).with("model", Echo.of(name));
            }
            throw OptError.notFound("%s: no model named '%s'", field, Echo.of(name)).withReason(OptError.Reason.MODEL_NOT_FOUND)
                    .with("model", Echo.of(name));
        }
        return m;
    }

    /** The registered models, by name. */
    public List<Model> models() {
        List<Model> out = new ArrayList<>();
        for (String name : names()) {
            Model m = models.get(name);
            if (m != null) {
                out.add(m);
            }
        }
        return out;
    }

    public List<String> names() {
        List<String> names = new ArrayList<>(models.keySet());
        Collections.sort(names);
        return names;
    }

    public void delete(String name, String field) {
        Model m = get(name, field);
        if (models.remove(name, m)) {
            leases.ended(m);
            m.delete();
            release(m.memoryBytes());
            metrics.forget(name);
        }
    }

    /**
     * Renews the lease of an ephemeral model (see {@code ModelSpec.lease_seconds}); returns its
     * grace period in seconds, 0 for a model without a lease.
     */
    public int renewLease(String name, String field) {
        return leases.renew(get(name, field));
    }

    /** A lease expired: the model is deleted and freed like a Delete, and logged. */
    private void expire(Model m) {
        if (!models.remove(m.name(), m)) {
            return;
        }
        long bytes = m.memoryBytes();
        m.expireLease();
        release(bytes);
        metrics.forget(m.name());
        LogEvent.info(LOG, "delete", m.name(), () -> String.format("model '%s': lease of %d s expired without"
                + " renewal; deleted at version %d (%d bytes freed)", m.name(),
                Integer.toUnsignedLong(m.spec().getLeaseSeconds()), m.version(), bytes), "cause", "lease_expired",
                "version", m.version(), "bytes", bytes);
        onLeaseExpired.accept(m);
    }

    public long reservedBytes() {
        return reserved.get();
    }

    public long memoryLimit() {
        return memoryLimit;
    }
}
