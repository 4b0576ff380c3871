package dev.optsidecar.server.conformance;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.server.SocketServer;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.Callable;

/** {@code conformance DIR [--target HOST:PORT]}: replays reference vectors; exits 1 on any failure. */
@Command(name = "conformance", mixinStandardHelpOptions = true,
        description = "Replays every reference case in DIR through the gRPC API with the Java client and compares"
                + " each recorded step within the tolerance the case carries. Prints PASS, FAIL or SKIP per case.")
public final class ConformanceCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "DIR", description = "Folder of case files (*.json; index.json is skipped).")
    Path dir;

    @Option(names = "--target", paramLabel = "HOST:PORT",
            description = "Server to test; by default one is started in this process on a loopback ephemeral port.")
    String target;

    @Option(names = "--threads", defaultValue = "2", description = "Engine threads of the in-process server (default: ${DEFAULT-VALUE}).")
    int threads;

    @Override
    public Integer call() throws Exception {
        if (!Files.isDirectory(dir)) {
            System.err.println("conformance: not a directory: " + dir);
            return 2;
        }
        SocketServer server = null;
        String address = target;
        if (address == null) {
            server = SocketServer.start("127.0.0.1", 0, threads, Runtime.getRuntime().maxMemory() / 2);
            address = "127.0.0.1:" + server.port();
        }
        try (OptSidecarClient client = OptSidecarClient.connect(address)) {
            ConformanceRunner.Summary summary = new ConformanceRunner(client, System.out).runAll(dir);
            return summary.failed() == 0 ? 0 : 1;
        } finally {
            if (server != null) {
                server.close();
            }
        }
    }
}
