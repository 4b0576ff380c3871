package dev.optsidecar.server.observe;

import io.prometheus.metrics.core.metrics.Counter;
import io.prometheus.metrics.core.metrics.Gauge;
import io.prometheus.metrics.core.metrics.GaugeWithCallback;
import io.prometheus.metrics.core.metrics.Histogram;
import io.prometheus.metrics.instrumentation.jvm.JvmMetrics;
import io.prometheus.metrics.model.registry.MultiCollector;
import io.prometheus.metrics.model.registry.PrometheusRegistry;

import java.util.Locale;
import java.util.Map;
import java.util.function.LongSupplier;
import java.util.function.Supplier;

/**
 * The server's Prometheus metrics, one registry per server: what the components record (steps,
 * their phases and bytes, journal and snapshot times) and what is read when scraped (trainers
 * attached, memory). Labels stay low-cardinality: the model name, and small fixed sets (phase,
 * reason, transport, wire dtype, group); never client ids or versions. A deleted model's series
 * are dropped ({@link #forget}).
 */
public final class ServerMetrics {
    /** Step phases, as the {@code phase} label names them. */
    public enum Phase { RECEIVE, APPLY, SEND }

    /** How a step's data travelled, as the {@code transport} label names it. */
    public enum Transport { GRPC, SHM }

    /** Seconds: from 100 µs to about 100 s, doubling. */
    private static final double[] SECONDS = exponential(1e-4, 2, 21);

    private final PrometheusRegistry registry = new PrometheusRegistry();
    private final Counter stepsApplied = Counter.builder().name("optsidecar_steps_applied_total")
            .help("Versions made by steps (gradient or set-weights), journal replays not counted")
            .labelNames("model").register(registry);
    private final Counter stepsRejected = Counter.builder().name("optsidecar_steps_rejected_total")
            .help("Steps not applied, by reason: the error's reason (e.g. STALE_GRADIENT, NON_FINITE_GRADIENT),"
                    + " its status code when it has none, or late / non_finite_skipped")
            .labelNames("model", "reason").register(registry);
    private final Histogram phaseSeconds = Histogram.builder().name("optsidecar_step_phase_seconds")
            .help("Time of each phase of a step: receive (first chunk to commit), apply (commit to result,"
                    + " a sync wait not counted), send (result to the last weights chunk queued)")
            .labelNames("model", "phase").classicOnly().classicUpperBounds(SECONDS).register(registry);
    private final Counter receivedBytes = Counter.builder().name("optsidecar_step_received_bytes_total")
            .help("Gradient (or weights-to-set) bytes received by Step streams")
            .labelNames("model", "transport", "dtype").register(registry);
    private final Counter sentBytes = Counter.builder().name("optsidecar_step_sent_bytes_total")
            .help("Weights bytes sent back by Step streams")
            .labelNames("model", "transport", "dtype").register(registry);
    private final Counter segmentSteps = Counter.builder().name("optsidecar_segment_steps_total")
            .help("Gradient steps whose data came through a shared segment, by path: in_place (one pass from and"
                    + " into the segment) or copied (gradient copied in, weights copied out)")
            .labelNames("model", "path").register(registry);
    private final Gauge gradientNorm = Gauge.builder().name("optsidecar_gradient_norm")
            .help("Global L2 norm of the last applied step's gradient, before clipping")
            .labelNames("model").register(registry);
    private final Gauge learningRate = Gauge.builder().name("optsidecar_learning_rate")
            .help("Learning rate the last applied step used, per parameter group")
            .labelNames("model", "group").register(registry);
    private final Histogram staleness = Histogram.builder().name("optsidecar_step_staleness_versions")
            .help("How many versions old each applied gradient was")
            .labelNames("model").classicOnly().classicUpperBounds(0, 1, 2, 4, 8, 16, 32, 64, 128)
            .register(registry);
    private final Histogram syncWaitSeconds = Histogram.builder().name("optsidecar_sync_wait_seconds")
            .help("Time a sync contribution waited for its round's other contributions")
            .labelNames("model").classicOnly().classicUpperBounds(SECONDS).register(registry);
    private final Histogram journalAppendSeconds = Histogram.builder().name("optsidecar_journal_append_seconds")
            .help("Time to append one step to the journal, its fsync included")
            .labelNames("model").classicOnly().classicUpperBounds(SECONDS).register(registry);
    private final Histogram journalFsyncSeconds = Histogram.builder().name("optsidecar_journal_fsync_seconds")
            .help("Time of the journal's fsync after a step (--journal fsync)")
            .labelNames("model").classicOnly().classicUpperBounds(SECONDS).register(registry);
    private final Histogram snapshotSeconds = Histogram.builder().name("optsidecar_snapshot_duration_seconds")
            .help("Time to write and commit a snapshot")
            .labelNames("model").classicOnly().classicUpperBounds(SECONDS).register(registry);
    private final Gauge snapshotBytes = Gauge.builder().name("optsidecar_snapshot_bytes")
            .help("Size of the model's last snapshot").labelNames("model").register(registry);
    private final Gauge snapshotSuccess = Gauge.builder().name("optsidecar_snapshot_last_success_timestamp_seconds")
            .help("Unix time of the model's last committed snapshot").labelNames("model").register(registry);

    private ServerMetrics() {
    }

    /**
     * The JVM's metrics, registered once per process: the library keeps every registry it
     * registered them with, and a registry per server would keep each closed server's models alive.
     */
    private static final class Jvm {
        static final PrometheusRegistry METRICS = new PrometheusRegistry();

        static {
            JvmMetrics.builder().register(METRICS);
        }
    }

    /** A server's metrics with the JVM's (memory, GC, threads, classes...) beside them. */
    public static ServerMetrics create() {
        ServerMetrics m = new ServerMetrics();
        m.registry.register((MultiCollector) Jvm.METRICS::scrape);
        return m;
    }

    /** What {@code /metrics} exposes. */
    public PrometheusRegistry registry() {
        return registry;
    }

    /**
     * Gauges read when scraped: bytes reserved under the memory limit, the limit, the models
     * loaded and each one's trainers attached.
     */
    public void watch(LongSupplier reservedBytes, long limitBytes, Supplier<Map<String, Integer>> trainersByModel) {
        GaugeWithCallback.builder().name("optsidecar_memory_reserved_bytes")
                .help("Bytes reserved under the memory limit: models, trainers' buffers, History, weights in flight")
                .callback(cb -> cb.call(reservedBytes.getAsLong())).register(registry);
        GaugeWithCallback.builder().name("optsidecar_memory_limit_bytes").help("The memory limit (--memory-limit)")
                .callback(cb -> cb.call(limitBytes)).register(registry);
        GaugeWithCallback.builder().name("optsidecar_models").help("Models loaded")
                .callback(cb -> cb.call(trainersByModel.get().size())).register(registry);
        GaugeWithCallback.builder().name("optsidecar_trainers_attached")
                .help("Trainers with a Step stream open on the model").labelNames("model")
                .callback(cb -> trainersByModel.get().forEach((model, n) -> cb.call(n, model))).register(registry);
    }

    public void stepApplied(String model) {
        stepsApplied.labelValues(model).inc();
    }

    /** What an applied gradient step reported: its norm, staleness and each group's learning rate. */
    public void stepFigures(String model, double gradNorm, long stalenessVersions, Map<String, Double> lrByGroup) {
        gradientNorm.labelValues(model).set(gradNorm);
        staleness.labelValues(model).observe(stalenessVersions);
        lrByGroup.forEach((group, lr) -> learningRate.labelValues(model, group).set(lr));
    }

    public void stepRejected(String model, String reason) {
        stepsRejected.labelValues(model, reason).inc();
    }

    public void phase(String model, Phase phase, long nanos) {
        phaseSeconds.labelValues(model, label(phase)).observe(nanos / 1e9);
    }

    public void received(String model, Transport transport, String dtype, long bytes) {
        receivedBytes.labelValues(model, label(transport), dtype).inc(bytes);
    }

    /** A gradient step over a shared segment was applied in place or through copies. */
    public void segmentStep(String model, boolean inPlace) {
        segmentSteps.labelValues(model, inPlace ? "in_place" : "copied").inc();
    }

    public void sent(String model, Transport transport, String dtype, long bytes) {
        sentBytes.labelValues(model, label(transport), dtype).inc(bytes);
    }

    public void syncWait(String model, long nanos) {
        syncWaitSeconds.labelValues(model).observe(nanos / 1e9);
    }

    /** A journal append took {@code appendNanos}, of which {@code fsyncNanos} (negative: no fsync) in fsync. */
    public void journalAppend(String model, long appendNanos, long fsyncNanos) {
        journalAppendSeconds.labelValues(model).observe(appendNanos / 1e9);
        if (fsyncNanos >= 0) {
            journalFsyncSeconds.labelValues(model).observe(fsyncNanos / 1e9);
        }
    }

    public void snapshotTaken(String model, long nanos, long bytes) {
        snapshotSeconds.labelValues(model).observe(nanos / 1e9);
        snapshotBytes.labelValues(model).set(bytes);
        snapshotSuccess.labelValues(model).set(System.currentTimeMillis() / 1e3);
    }

    /** The model was deleted: its series go, so that names come and go without piling up. */
    public void forget(String model) {
        for (var metric : java.util.List.of(stepsApplied, stepsRejected, phaseSeconds, receivedBytes, sentBytes,
                segmentSteps, gradientNorm, learningRate, staleness, syncWaitSeconds, journalAppendSeconds,
                journalFsyncSeconds, snapshotSeconds, snapshotBytes, snapshotSuccess)) {
            metric.removeIf(labels -> labels.get(0).equals(model));
        }
    }

    private static String label(Enum<?> value) {
        return value.name().toLowerCase(Locale.ROOT);
    }

    private static double[] exponential(double start, double factor, int count) {
        double[] bounds = new double[count];
        for (int i = 0; i < count; i++) {
            bounds[i] = start * Math.pow(factor, i);
        }
        return bounds;
    }
}
