package dev.optsidecar.server.bench;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.Combine;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.CoordinationMode;
import dev.optsidecar.proto.v1.CoordinationStatus;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.SyncOptions;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.model.Model;

import java.io.PrintStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The several-trainers table: aggregate gradients per second with 1, 2, 4, 8 trainers on one
 * model, asynchronous and synchronous. Each trainer is a thread with its own {@link Trainer},
 * client id and connection to an in-process server on loopback, stepping as fast as it can. Each
 * row registers a fresh RAdam model, lets the trainers run for a warm-up, then counts what the
 * server applied over one window of wall time (the model's version and its coordination
 * counters, read before and after), so rates are over that single window, not medians.
 */
final class TrainersBench {
    /** Held so that the level set on it lasts: the logging framework keeps loggers only weakly. */
    private static final Logger SERVER_LOG = Logger.getLogger(SocketServer.class.getName());
    /** Server heap per parameter for an RAdam model: weights, step gradient and two state slots. */
    private static final long MODEL_HEAP_PER_ELEMENT = 4L * Float.BYTES;
    /**
     * Heap per parameter and trainer: its gradient buffer on the server, the weights copied out
     * for it, and the gradient and weights arrays of the trainer itself.
     */
    private static final long TRAINER_HEAP_PER_ELEMENT = 4L * Float.BYTES;
    /** Chunks in flight per trainer, both ways, on top of the arrays. */
    private static final long TRAINER_HEAP_SLACK = 32L << 20;
    /** Model size of the unmeasured run before the table (or the smallest size, if smaller). */
    private static final long TRANSPORT_WARMUP_PARAMS = 1_000_000;
    /** Steps every trainer finishes before the window opens, however short the warm-up time. */
    private static final int WARMUP_STEPS = 3;
    /**
     * Versions a window lasts at least, so that the step cut off at either end is a small part of
     * it; a window runs past its time for them, up to this many times that time.
     */
    private static final int MIN_WINDOW_VERSIONS = 20;
    private static final double MAX_WINDOW_FACTOR = 10;
    /** How long the trainers get to finish their last step once the window has closed. */
    private static final long FINISH_SECONDS = 60;

    private static final int WARMUP = 0;
    private static final int MEASURE = 1;
    private static final int STOP = 2;

    /** The coordination modes the table compares. */
    enum Mode {
        ASYNC, SYNC;

        String label() {
            return name().toLowerCase(Locale.ROOT);
        }

        Coordination coordination() {
            return this == ASYNC
                    ? Coordination.newBuilder().setMode(CoordinationMode.COORDINATION_ASYNC).build()
                    : Coordination.newBuilder().setMode(CoordinationMode.COORDINATION_SYNC)
                            .setSync(SyncOptions.newBuilder().setK(0).setCombine(Combine.COMBINE_MEAN)).build();
        }
    }

    /**
     * One row. The window counts come from the server; {@code trainerApplied} and
     * {@code trainerLate} are what the trainers were told over the whole run (warm-up included),
     * and {@code serverApplied}, {@code serverLate} and {@code finalVersion} the server's totals
     * once every trainer had stopped, so the two can be checked against each other.
     */
    record Row(Mode mode, int clients, long params, double seconds, long versions, long contributions,
               long late, double meanStaleness, double medianStepMs, double coresBusy, double othersBusy,
               long trainerApplied, long trainerLate, long serverApplied, long serverLate, long finalVersion) {
        double versionsPerSecond() {
            return versions / seconds;
        }

        double gradientsPerSecond() {
            return contributions / seconds;
        }

        /**
         * How the trainers' and the server's totals disagree, or null when they agree: every
         * gradient a trainer was told was applied is one the server counts as applied, every late
         * one one it counts as late, and asynchronously each applied gradient is one version.
         */
        String countMismatch() {
            List<String> wrong = new ArrayList<>();
            if (trainerApplied != serverApplied) {
                wrong.add("trainers were told " + trainerApplied + " gradients were applied, the server counts "
                        + serverApplied);
            }
            if (trainerLate != serverLate) {
                wrong.add("trainers were told " + trainerLate + " were late, the server counts " + serverLate);
            }
            if (mode == Mode.ASYNC && finalVersion != serverApplied) {
                wrong.add("async version " + finalVersion + " after " + serverApplied + " applied gradients");
            }
            return wrong.isEmpty() ? null : String.join("; ", wrong);
        }

        /** Gradient bytes the server received per second, applied or late, in 10^6 bytes. */
        double megabytesPerSecond() {
            return (contributions + late) * (double) params * Float.BYTES / 1e6 / seconds;
        }
    }

    private final int threads;
    private final double warmupSeconds;
    private final double seconds;
    private final PrintStream out;

    TrainersBench(int threads, double warmupSeconds, double seconds, PrintStream out) {
        this.threads = threads;
        this.warmupSeconds = warmupSeconds;
        this.seconds = seconds;
        this.out = out;
    }

    /** Prints the table for every size, mode and trainer count, in that nesting, and returns its rows. */
    List<Row> run(List<Long> sizes, List<Mode> modes, List<Integer> clients) throws Exception {
        SERVER_LOG.setLevel(Level.WARNING); // its "serving on" line would land in the middle of the tables
        int base = clients.stream().mapToInt(Integer::intValue).min().orElseThrow();
        List<Row> rows = new ArrayList<>();
        try (SocketServer server = SocketServer.start("127.0.0.1", 0, threads, Runtime.getRuntime().maxMemory());
             OptSidecarClient control = OptSidecarClient.connect("127.0.0.1:" + server.port())) {
            // Unmeasured: both modes with two trainers, so that the first rows do not time the JIT.
            int warmParams = (int) Math.min(TRANSPORT_WARMUP_PARAMS, sizes.stream().mapToLong(Long::longValue).min()
                    .orElseThrow());
            for (Mode mode : modes) {
                measure(server, control, mode, warmParams, 2, warmupSeconds, warmupSeconds);
            }
            out.printf(Locale.ROOT, "%nSeveral trainers on one model: each trainer a thread with its own Trainer,"
                    + " client id and connection, stepping RAdam as fast as it can over loopback gRPC to an in-process"
                    + " server with %d engine threads, all in this process on %d CPUs; sync: one step per contribution"
                    + " of every attached trainer (k = 0), mean%n", threads, Runtime.getRuntime().availableProcessors());
            out.printf(Locale.ROOT, "  one window per row of %.1f s, or longer until %d versions were applied"
                    + " (at most %.0f s), after %.1f s of warm-up; rates are over that window (not medians): versions/s = steps applied, grads/s = gradients applied, grad MB/s ="
                    + " gradient bytes the server received; scaling = grads/s / the %d-trainer grads/s of the same"
                    + " mode and size; step ms = median Trainer.step; staleness = mean versions a gradient was behind"
                    + " (async); late = sync gradients that missed their step; cores = this process's CPU time / window"
                    + " (server and trainers together); others = cores other processes kept busy meanwhile;"
                    + " CPU ms/grad = cores x 1000 / grads/s; MB = 10^6 bytes%n", seconds, MIN_WINDOW_VERSIONS,
                    MAX_WINDOW_FACTOR * seconds, warmupSeconds, base);
            String format = "%9s  %-5s  %7s  %10s  %9s  %10s  %7s  %8s  %9s  %5s  %5s  %11s  %6s%n";
            out.printf(Locale.ROOT, format, "model MB", "mode", "clients", "versions/s", "grads/s", "grad MB/s",
                    "scaling", "step ms", "staleness", "late", "cores", "CPU ms/grad", "others");
            for (long params : sizes) {
                String mb = megabytes(params);
                for (Mode mode : modes) {
                    Map<Integer, Double> rate = new HashMap<>();
                    for (int n : clients) {
                        String shortfall = params > Integer.MAX_VALUE - 8
                                ? "skipped: the client side holds each tensor in one float[]"
                                : Measure.heapShortfall(params * (MODEL_HEAP_PER_ELEMENT + n * TRAINER_HEAP_PER_ELEMENT)
                                        + n * TRAINER_HEAP_SLACK);
                        if (shortfall != null) {
                            out.printf(Locale.ROOT, "%9s  %-5s  %7d  %s%n", mb, mode.label(), n, shortfall);
                            continue;
                        }
                        Row row = measure(server, control, mode, (int) params, n, warmupSeconds, seconds);
                        rows.add(row);
                        rate.put(n, row.gradientsPerSecond());
                        Double first = rate.get(base);
                        out.printf(Locale.ROOT, format, mb, mode.label(), n,
                                String.format(Locale.ROOT, "%.1f", row.versionsPerSecond()),
                                String.format(Locale.ROOT, "%.1f", row.gradientsPerSecond()),
                                String.format(Locale.ROOT, "%.0f", row.megabytesPerSecond()),
                                first == null ? "-" : String.format(Locale.ROOT, "%.2f", row.gradientsPerSecond() / first),
                                String.format(Locale.ROOT, "%.1f", row.medianStepMs()),
                                mode == Mode.ASYNC ? String.format(Locale.ROOT, "%.2f", row.meanStaleness()) : "-",
                                Long.toString(row.late()),
                                String.format(Locale.ROOT, "%.2f", row.coresBusy()),
                                String.format(Locale.ROOT, "%.1f", row.coresBusy() * 1000 / row.gradientsPerSecond()),
                                Double.isNaN(row.othersBusy()) ? "-" : String.format(Locale.ROOT, "%.2f", row.othersBusy()));
                        String mismatch = row.countMismatch();
                        if (mismatch != null) {
                            out.println("  counts disagree: " + mismatch);
                        }
                    }
                }
            }
        }
        return rows;
    }

    /** Registers a fresh model, runs {@code clients} trainers on it through warm-up and the window, and deletes it. */
    private Row measure(SocketServer server, OptSidecarClient control, Mode mode, int params, int clients,
                        double warmupSeconds, double seconds) throws Exception {
        String name = "trainers-bench-" + mode.label() + "-" + clients + "-" + System.nanoTime();
        float[] initial = new float[params];
        BenchTensor.fillRandom(initial, 4);
        control.register(ModelSpec.newBuilder()
                .setName(name)
                .addTensors(TensorSpec.newBuilder().setName("w").addShape(params))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("RAdam"))
                .setCoordination(mode.coordination())
                .build(), List.of(TensorData.of(initial)));
        initial = null;
        Model model = server.server().registry().get(name, "model");
        String target = "127.0.0.1:" + server.port();
        Run run = new Run(clients);
        List<Thread> trainerThreads = new ArrayList<>();
        List<Worker> workers = new ArrayList<>();
        try {
            for (int i = 0; i < clients; i++) {
                Worker w = new Worker(run, target, name, "trainer-" + i, params, 100 + i);
                Thread t = new Thread(w, "trainers-bench-" + i);
                t.setDaemon(true);
                workers.add(w);
                trainerThreads.add(t);
                t.start();
            }
            run.ready.await();
            run.start.countDown();
            sleep(warmupSeconds);
            awaitSteps(workers, WARMUP_STEPS);
            ModelInfo before = model.describe();
            long cpu0 = processCpuNanos();
            long[] machine0 = machineJiffies();
            long t0 = System.nanoTime();
            run.windowStart = t0;
            run.phase = MEASURE;
            sleep(seconds);
            awaitVersion(model, before.getVersion() + MIN_WINDOW_VERSIONS, t0 + Math.round(MAX_WINDOW_FACTOR * seconds * 1e9));
            ModelInfo after = model.describe();
            long t1 = System.nanoTime();
            long cpu1 = processCpuNanos();
            long[] machine1 = machineJiffies();
            run.phase = STOP;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(FINISH_SECONDS);
            for (int i = 0; i < trainerThreads.size(); i++) {
                trainerThreads.get(i).join(Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime())));
                if (trainerThreads.get(i).isAlive()) {
                    throw new IllegalStateException(String.format(Locale.ROOT, "%s %s with %d trainers: trainer %d"
                            + " did not finish its last step within %d s of the window's end", name, mode.label(),
                            clients, i, FINISH_SECONDS));
                }
            }
            for (Worker w : workers) {
                if (w.error != null) {
                    throw new IllegalStateException(mode.label() + " with " + clients + " trainers: " + w.clientId
                            + " failed", w.error);
                }
            }
            ModelInfo done = model.describe();
            CoordinationStatus s0 = before.getCoordination();
            CoordinationStatus s1 = after.getCoordination();
            double cores = cpu0 < 0 || cpu1 < 0 ? Double.NaN : (cpu1 - cpu0) / (double) (t1 - t0);
            long[] stepNanos = workers.stream().flatMapToLong(w -> Arrays.stream(w.windowSteps, 0, w.windowCount))
                    .sorted().toArray();
            return new Row(mode, clients, params, (t1 - t0) / 1e9,
                    after.getVersion() - before.getVersion(),
                    s1.getContributionsApplied() - s0.getContributionsApplied(),
                    s1.getContributionsLate() - s0.getContributionsLate()
                            + s1.getContributionsRejected() - s0.getContributionsRejected(),
                    meanStaleness(s0, s1),
                    stepNanos.length == 0 ? Double.NaN : Measure.median(Arrays.stream(stepNanos)
                            .mapToDouble(v -> v / 1e6).toArray()),
                    cores,
                    othersBusy(machine0, machine1, cores),
                    workers.stream().mapToLong(w -> w.applied).sum(),
                    workers.stream().mapToLong(w -> w.late).sum(),
                    done.getCoordination().getContributionsApplied(),
                    done.getCoordination().getContributionsLate(),
                    done.getVersion());
        } finally {
            run.phase = STOP;
            run.start.countDown();
            // Deleting fails a sync step still waiting for contributions, so no trainer is left behind.
            control.delete(name);
            for (Thread t : trainerThreads) {
                t.join(TimeUnit.SECONDS.toMillis(FINISH_SECONDS));
            }
        }
    }

    /**
     * Waits until every trainer has finished {@code steps} steps (or one has failed), so that all
     * are attached and in step before the window opens, however late a thread got going.
     */
    private static void awaitSteps(List<Worker> workers, int steps) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(FINISH_SECONDS);
        while (workers.stream().anyMatch(w -> w.steps < steps && w.error == null)) {
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException("a trainer did not finish " + steps + " warm-up steps within "
                        + FINISH_SECONDS + " s");
            }
            Thread.sleep(5);
        }
    }

    /** Waits until the model reaches {@code version}, or until {@code deadline} (System.nanoTime). */
    private static void awaitVersion(Model model, long version, long deadline) throws InterruptedException {
        while (model.version() < version && System.nanoTime() < deadline) {
            Thread.sleep(2);
        }
    }

    /**
     * Mean staleness of the gradients applied between two readings of the histogram; its last
     * bucket holds every staleness from 16 on, so past 16 trainers this is a lower bound.
     */
    private static double meanStaleness(CoordinationStatus before, CoordinationStatus after) {
        double sum = 0;
        long count = 0;
        for (int i = 0; i < after.getStalenessHistogramCount(); i++) {
            long n = after.getStalenessHistogram(i)
                    - (i < before.getStalenessHistogramCount() ? before.getStalenessHistogram(i) : 0);
            sum += (double) i * n;
            count += n;
        }
        return count == 0 ? 0 : sum / count;
    }

    /**
     * Busy and total jiffies of all CPUs from /proc/stat, to tell what other processes took from
     * the window; null where it cannot be read.
     */
    private static long[] machineJiffies() {
        try {
            String[] f = java.nio.file.Files.readAllLines(java.nio.file.Path.of("/proc/stat")).get(0).trim().split("\\s+");
            if (!f[0].equals("cpu") || f.length < 8) {
                return null;
            }
            long total = 0;
            for (int i = 1; i < Math.min(f.length, 9); i++) { // user .. steal; guest time is counted in user
                total += Long.parseLong(f[i]);
            }
            long idle = Long.parseLong(f[4]) + Long.parseLong(f[5]);
            return new long[] {total - idle, total};
        } catch (java.io.IOException | RuntimeException e) {
            return null;
        }
    }

    /** Cores other processes kept busy over the window: the machine's busy cores less this process's. */
    private static double othersBusy(long[] before, long[] after, double processCores) {
        if (before == null || after == null || after[1] <= before[1] || Double.isNaN(processCores)) {
            return Double.NaN;
        }
        double machine = (after[0] - before[0]) / (double) (after[1] - before[1])
                * Runtime.getRuntime().availableProcessors();
        return Math.max(0, machine - processCores);
    }

    /** CPU time of the whole process (server, trainers and transport alike), or -1 where not available. */
    private static long processCpuNanos() {
        return java.lang.management.ManagementFactory.getOperatingSystemMXBean()
                instanceof com.sun.management.OperatingSystemMXBean os ? os.getProcessCpuTime() : -1;
    }

    private static String megabytes(long params) {
        double mb = params * (double) Float.BYTES / 1e6;
        if (mb >= 1 && mb == Math.rint(mb)) {
            return Long.toString((long) mb);
        }
        return String.format(Locale.ROOT, mb >= 0.1 ? "%.2f" : "%.4f", mb);
    }

    private static void sleep(double seconds) throws InterruptedException {
        Thread.sleep(Math.max(0, Math.round(seconds * 1000)));
    }

    /** What the trainers of one row share: when to start, and which phase the row is in. */
    private static final class Run {
        final CountDownLatch ready;
        final CountDownLatch start = new CountDownLatch(1);
        volatile int phase = WARMUP;
        volatile long windowStart;

        Run(int clients) {
            this.ready = new CountDownLatch(clients);
        }
    }

    /** One trainer: its own connection, Trainer and client id, stepping until the row stops. */
    private static final class Worker implements Runnable {
        private final Run run;
        private final String target;
        private final String model;
        final String clientId;
        private final int params;
        private final long seed;
        /** Steps applied and late over the whole run; read after the thread has ended. */
        long applied;
        long late;
        /** Steps finished so far, for the warm-up to wait on. */
        volatile long steps;
        /** Trainer.step nanoseconds of the steps that began and ended inside the window. */
        long[] windowSteps = new long[256];
        int windowCount;
        volatile Throwable error;

        Worker(Run run, String target, String model, String clientId, int params, long seed) {
            this.run = run;
            this.target = target;
            this.model = model;
            this.clientId = clientId;
            this.params = params;
            this.seed = seed;
        }

        @Override
        public void run() {
            boolean counted = false;
            try (OptSidecarClient client = OptSidecarClient.connect(target);
                 Trainer trainer = client.trainer(model, clientId)) {
                float[][] grads = {new float[params]};
                float[][] weights = {new float[params]};
                BenchTensor.fillRandom(grads[0], seed);
                run.ready.countDown();
                counted = true;
                run.start.await();
                while (run.phase != STOP) {
                    long start = System.nanoTime();
                    StepResult result = trainer.step(grads, weights);
                    long end = System.nanoTime();
                    if (result.getLate()) {
                        late++;
                    } else {
                        applied++;
                    }
                    steps++;
                    if (run.phase == MEASURE && start >= run.windowStart) {
                        if (windowCount == windowSteps.length) {
                            windowSteps = Arrays.copyOf(windowSteps, 2 * windowCount);
                        }
                        windowSteps[windowCount++] = end - start;
                    }
                }
            } catch (Throwable e) {
                error = e;
            } finally {
                if (!counted) {
                    run.ready.countDown();
                }
            }
        }
    }
}
