package dev.optsidecar.server;

import dev.optsidecar.server.bench.BenchCommand;
import dev.optsidecar.server.conformance.ConformanceCommand;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

import java.util.concurrent.Callable;

/** {@code java -jar optsidecar-server.jar [serve flags] | conformance DIR | bench}. */
@Command(name = "optsidecar-server", mixinStandardHelpOptions = true, version = "optsidecar 0.1.0",
        description = "Optimizer-as-a-service: holds model parameters and optimizer state, applies steps to"
                + " gradients streamed by trainers over gRPC. With no subcommand it serves.",
        subcommands = {ConformanceCommand.class, BenchCommand.class})
public final class Main implements Callable<Integer> {
    @Option(names = "--port", defaultValue = "50051", description = "TCP port to listen on (default: ${DEFAULT-VALUE}).")
    int port;

    @Option(names = "--bind", defaultValue = "127.0.0.1",
            description = "Address to bind (default: ${DEFAULT-VALUE}; 0.0.0.0 for all interfaces).")
    String bind;

    @Option(names = "--threads", description = "Engine compute threads (default: the number of CPUs, ${sys:optsidecar.cpus}).")
    Integer threads;

    @Option(names = "--memory-limit", converter = ByteSize.class,
            description = "Most bytes all models together may hold, e.g. 8g or 512m (default: the JVM heap less 512m).")
    Long memoryLimit;

    public static void main(String[] args) {
        System.setProperty("optsidecar.cpus", String.valueOf(Runtime.getRuntime().availableProcessors()));
        System.exit(new CommandLine(new Main()).execute(args));
    }

    static int defaultThreads() {
        return Runtime.getRuntime().availableProcessors();
    }

    static long defaultMemoryLimit() {
        long heap = Runtime.getRuntime().maxMemory();
        return Math.max(heap / 2, heap - (512L << 20));
    }

    @Override
    public Integer call() throws Exception {
        SidecarServer server = SidecarServer.start(bind, port,
                threads == null ? defaultThreads() : threads,
                memoryLimit == null ? defaultMemoryLimit() : memoryLimit);
        Runtime.getRuntime().addShutdownHook(new Thread(server::close, "optsidecar-shutdown"));
        server.awaitTermination();
        return 0;
    }

    /** Parses sizes like 512m, 8g or a plain byte count. */
    static final class ByteSize implements CommandLine.ITypeConverter<Long> {
        @Override
        public Long convert(String value) {
            String v = value.trim().toLowerCase(java.util.Locale.ROOT);
            long unit = 1;
            char last = v.isEmpty() ? ' ' : v.charAt(v.length() - 1);
            switch (last) {
                case 'k' -> unit = 1L << 10;
                case 'm' -> unit = 1L << 20;
                case 'g' -> unit = 1L << 30;
                case 't' -> unit = 1L << 40;
                default -> { }
            }
            String digits = unit == 1 ? v : v.substring(0, v.length() - 1);
            try {
                long n = Long.parseLong(digits);
                if (n <= 0) {
                    throw new CommandLine.TypeConversionException("size must be positive: " + value);
                }
                return Math.multiplyExact(n, unit);
            } catch (NumberFormatException | ArithmeticException e) {
                throw new CommandLine.TypeConversionException("not a size: '" + value + "' (try 512m or 8g)");
            }
        }
    }
}
