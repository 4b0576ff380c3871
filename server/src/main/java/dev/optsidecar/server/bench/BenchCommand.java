package dev.optsidecar.server.bench;

import dev.optsidecar.server.fileutil.FileTrees;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;

/**
 * Prints the benchmark tables: the CPU engine's RAdam, Schedule-Free RAdam and Schedule-Free
 * AdamW + EMA steps, each against a memory-pass ceiling on the same threads; full gRPC step round
 * trips against an in-process server; what the step journal costs a step; aggregate gradients per
 * second with several trainers on one model, asynchronous and synchronous; and writing and reading
 * a snapshot against plain file copies of the same bytes. The large sizes need a few GB of heap;
 * run it as {@code java -Xmx8g -jar optsidecar-server.jar bench}.
 */
@Command(name = "bench", mixinStandardHelpOptions = true,
        description = {"Benchmarks the engine's RAdam, Schedule-Free RAdam and Schedule-Free AdamW + EMA steps,"
                + " each against a memory-pass ceiling, full gRPC step round trips against an in-process server,"
                + " the step journal's cost, aggregate gradients per second with several trainers on one model"
                + " (async and sync), and snapshot writes and reads against plain file copies of the same bytes.",
                "The 400 MB end-to-end size needs about 4 GB of heap: run with java -Xmx8g -jar ..."})
public final class BenchCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Option(names = "--threads", defaultValue = "2", description = "Engine threads (default: ${DEFAULT-VALUE}).")
    int threads;

    @Option(names = "--sizes", split = ",", defaultValue = "1M,10M,50M", converter = Count.class,
            description = "Engine tensor sizes in parameters, e.g. 1M,10M,50M (default: ${DEFAULT-VALUE}).")
    List<Long> sizes;

    @Option(names = "--e2e-mb", split = ",", defaultValue = "4,40,400",
            description = "End-to-end model sizes in MB of float32 (default: ${DEFAULT-VALUE}).")
    List<Integer> e2eMegabytes;

    @Option(names = "--iterations", defaultValue = "15",
            description = "Measured iterations per size; medians are reported (default: ${DEFAULT-VALUE}).")
    int iterations;

    @Option(names = "--warmup", defaultValue = "5",
            description = "Unmeasured iterations per size before measuring (default: ${DEFAULT-VALUE}).")
    int warmup;

    @Option(names = "--skip-engine", description = "Skip the engine table.")
    boolean skipEngine;

    @Option(names = "--skip-e2e", description = "Skip the end-to-end table.")
    boolean skipE2e;

    @Option(names = "--skip-snapshot", description = "Skip the snapshot table.")
    boolean skipSnapshot;

    @Option(names = "--skip-journal", description = "Skip the step journal table.")
    boolean skipJournal;

    @Option(names = "--journal-mb", defaultValue = "40",
            description = "Model size of the step journal table, in MB (default: ${DEFAULT-VALUE}).")
    int journalMegabytes;

    @Option(names = "--skip-ps", description = "Skip the several-trainers table.")
    boolean skipTrainers;

    @Option(names = "--ps-mb", split = ",", defaultValue = "4,40",
            description = "Model sizes of the several-trainers table, in MB of float32 (default: ${DEFAULT-VALUE}).")
    List<Integer> trainersMegabytes;

    @Option(names = "--ps-clients", split = ",", defaultValue = "1,2,4,8",
            description = "Trainer counts of the several-trainers table; scaling is against the smallest"
                    + " (default: ${DEFAULT-VALUE}).")
    List<Integer> trainersClients;

    @Option(names = "--ps-modes", split = ",", defaultValue = "async,sync", converter = ModeConverter.class,
            description = "Coordination modes of the several-trainers table: async, sync (default: ${DEFAULT-VALUE}).")
    List<TrainersBench.Mode> trainersModes;

    @Option(names = "--ps-seconds", defaultValue = "5",
            description = "Measured window per row of the several-trainers table, in seconds (default: ${DEFAULT-VALUE}).")
    double trainersSeconds;

    @Option(names = "--ps-warmup-seconds", defaultValue = "2",
            description = "Unmeasured stepping per row before the window, in seconds (default: ${DEFAULT-VALUE}).")
    double trainersWarmupSeconds;

    @Option(names = "--snapshot-dir", paramLabel = "DIR",
            description = "Where the snapshot table writes (a fresh subdirectory, removed afterwards;"
                    + " default: under java.io.tmpdir).")
    Path snapshotDir;

    @Option(names = "--snapshot-params", defaultValue = "100M", converter = Count.class,
            description = "Snapshot model size in parameters; weights and two state slots make 12 bytes per"
                    + " parameter on disk and in heap (default: ${DEFAULT-VALUE}).")
    long snapshotParams;

    @Option(names = "--snapshot-iterations", defaultValue = "3",
            description = "Measured snapshot rounds, after one warmup round (default: ${DEFAULT-VALUE}).")
    int snapshotIterations;

    @Override
    public Integer call() throws Exception {
        if (threads < 1 || iterations < 1 || warmup < 0 || snapshotIterations < 1
                || e2eMegabytes.stream().anyMatch(mb -> mb < 1)
                || trainersMegabytes.stream().anyMatch(mb -> mb < 1)
                || trainersClients.stream().anyMatch(n -> n < 1)) {
            throw new CommandLine.ParameterException(spec.commandLine(),
                    "--threads, --iterations, --snapshot-iterations, --e2e-mb, --ps-mb and --ps-clients must be at"
                            + " least 1, --warmup at least 0");
        }
        if (!(trainersSeconds > 0) || !(trainersWarmupSeconds >= 0)) {
            throw new CommandLine.ParameterException(spec.commandLine(),
                    "--ps-seconds must be positive, --ps-warmup-seconds at least 0");
        }
        Runtime rt = Runtime.getRuntime();
        System.out.printf(Locale.ROOT, "optsidecar bench: %s %s (%s), %d CPUs, %d engine threads, max heap %.1f GB,"
                        + " %d warmup + %d measured iterations%n",
                System.getProperty("java.vm.name"), System.getProperty("java.vm.version"),
                System.getProperty("java.vm.vendor"), rt.availableProcessors(), threads, rt.maxMemory() / 1e9,
                warmup, iterations);
        long tables = java.util.stream.Stream.of(skipEngine, skipE2e, skipJournal, skipTrainers, skipSnapshot)
                .filter(skip -> !skip).count();
        // On stderr through the log, every few seconds: stdout stays the tables.
        dev.optsidecar.server.observe.Progress progress = dev.optsidecar.server.observe.Progress.start(
                java.util.logging.Logger.getLogger(BenchCommand.class.getName()), "bench", null, "bench", "tables",
                tables);
        if (!skipEngine) {
            new EngineBench(threads, warmup, iterations).run(sizes);
            progress.advance(1);
        }
        if (!skipE2e) {
            new EndToEndBench(threads, warmup, iterations).run(e2eMegabytes);
            progress.advance(1);
        }
        if (!skipJournal) {
            Path dir = scratchDir("optsidecar-journal-bench-");
            try {
                new JournalBench(threads, warmup, iterations).run(dir, journalMegabytes);
            } finally {
                FileTrees.delete(dir);
            }
            progress.advance(1);
        }
        if (!skipTrainers) {
            new TrainersBench(threads, trainersWarmupSeconds, trainersSeconds, System.out).run(
                    trainersMegabytes.stream().map(mb -> mb * 1_000_000L / Float.BYTES).toList(),
                    trainersModes.stream().distinct().toList(), trainersClients.stream().distinct().toList());
            progress.advance(1);
        }
        if (!skipSnapshot) {
            runSnapshot();
            progress.advance(1);
        }
        progress.finish();
        return 0;
    }

    private void runSnapshot() throws Exception {
        String shortfall = Measure.heapShortfall(SnapshotBench.heapBytes(snapshotParams));
        if (shortfall != null) {
            System.out.printf(Locale.ROOT, "%nSnapshots: %s params %s%n", Measure.count(snapshotParams), shortfall);
            return;
        }
        Path dir = scratchDir("optsidecar-snapshot-bench-");
        System.out.printf(Locale.ROOT, "%nSnapshot files go to %s (removed afterwards)%n", dir);
        new SnapshotBench(dir, 1, snapshotIterations, System.out).run(snapshotParams);
    }

    /** A fresh directory for files a table writes, under --snapshot-dir or the temporary directory. */
    private Path scratchDir(String prefix) throws java.io.IOException {
        Path parent = snapshotDir != null ? snapshotDir : Path.of(System.getProperty("java.io.tmpdir"));
        Files.createDirectories(parent);
        return Files.createTempDirectory(parent, prefix);
    }

    /** Parses a coordination mode name: async or sync. */
    static final class ModeConverter implements CommandLine.ITypeConverter<TrainersBench.Mode> {
        @Override
        public TrainersBench.Mode convert(String value) {
            for (TrainersBench.Mode m : TrainersBench.Mode.values()) {
                if (m.label().equals(value.trim().toLowerCase(Locale.ROOT))) {
                    return m;
                }
            }
            throw new CommandLine.TypeConversionException("not a mode: '" + value + "' (async or sync)");
        }
    }

    /** Parses counts like 50M, 500K, 1G (decimal) or a plain number. */
    static final class Count implements CommandLine.ITypeConverter<Long> {
        @Override
        public Long convert(String value) {
            String v = value.trim().toUpperCase(Locale.ROOT);
            long unit = switch (v.isEmpty() ? ' ' : v.charAt(v.length() - 1)) {
                case 'K' -> 1_000L;
                case 'M' -> 1_000_000L;
                case 'G' -> 1_000_000_000L;
                default -> 1L;
            };
            try {
                long n = Math.multiplyExact(Long.parseLong(unit == 1 ? v : v.substring(0, v.length() - 1)), unit);
                if (n <= 0) {
                    throw new CommandLine.TypeConversionException("size must be positive: " + value);
                }
                return n;
            } catch (NumberFormatException | ArithmeticException e) {
                throw new CommandLine.TypeConversionException("not a size: '" + value + "' (try 10M)");
            }
        }
    }
}
