package dev.optsidecar.server.bench;

import picocli.CommandLine.Command;

import java.util.concurrent.Callable;

/** Prints a table of engine and end-to-end step throughput. */
@Command(name = "bench", mixinStandardHelpOptions = true, description = "Benchmarks the engine and the gRPC step path.")
public final class BenchCommand implements Callable<Integer> {
    @Override
    public Integer call() {
        throw new UnsupportedOperationException("bench is being written");
    }
}
