package dev.optsidecar.server.conformance;

import picocli.CommandLine.Command;

import java.util.concurrent.Callable;

@Command(name = "conformance", mixinStandardHelpOptions = true, description = "Replays reference vectors.")
public final class ConformanceCommand implements Callable<Integer> {
    @Override
    public Integer call() {
        throw new UnsupportedOperationException("conformance is being written");
    }
}
