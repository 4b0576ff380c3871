package dev.optsidecar.server;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A mistake on the command line, or a server that cannot start, ends the packaged jar with one
 * line on stderr naming the problem (and at most a hint to --help): exit 2 for the flags, 1 when
 * the flags are fine but the server cannot start.
 */
class StartupErrorsIT {
    private static final int USAGE = 2;
    private static final int CANNOT_START = 1;

    @Test
    void anUnknownFlag() throws Exception {
        Result r = run("--bogus");
        r.assertOneLine(USAGE, "Unknown option: '--bogus'");
        assertTrue(r.lines().size() == 2 && r.lines().get(1).contains("--help"), r.stderr());
    }

    @Test
    void aPortInUse() throws Exception {
        try (ServerSocket taken = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            run("--port", String.valueOf(taken.getLocalPort()))
                    .assertOneLine(CANNOT_START,
                            "cannot start: 127.0.0.1:" + taken.getLocalPort() + ": Address already in use");
        }
    }

    @Test
    void aBindAddressOfAnotherMachine() throws Exception {
        run("--bind", "192.0.2.1", "--port", "0").assertOneLine(USAGE, "--bind 192.0.2.1: not an address of this machine");
    }

    @Test
    void zeroOrNegativeThreads() throws Exception {
        run("--threads", "0").assertOneLine(USAGE, "--threads must be at least 1, not 0");
        run("--threads", "-2").assertOneLine(USAGE, "--threads must be at least 1, not -2");
    }

    @Test
    void aStateDirThatIsAFileOrCannotBeWritten(@TempDir Path dir) throws Exception {
        Path file = Files.writeString(dir.resolve("file"), "x");
        run("--port", "0", "--state-dir", file.toString()).assertOneLine(USAGE, "--state-dir", "is a file");
        run("--port", "0", "--state-dir", file.resolve("sub").toString())
                .assertOneLine(CANNOT_START, "cannot start: state directory", "is not writable");
    }

    @Test
    void restoringAModelWithoutSnapshots(@TempDir Path dir) throws Exception {
        run("--port", "0", "--state-dir", dir.toString(), "--restore", "nosuch")
                .assertOneLine(CANNOT_START, "cannot start: --restore nosuch: ", "model 'nosuch' has no snapshots");
    }

    /** A model whose only snapshot cannot be loaded: named, it stops the start; with latest, the others serve. */
    @Test
    void restoringAModelWhoseSnapshotCannotBeLoaded(@TempDir Path dir) throws Exception {
        try (SocketServer s = SocketServer.start("127.0.0.1", 0, 2, 1L << 28,
                new dev.optsidecar.server.durability.Persistence.Options(dir, 3,
                        dev.optsidecar.server.durability.StepJournal.Sync.WRITE, 0, null, false), List.of());
             dev.optsidecar.client.OptSidecarClient client = dev.optsidecar.client.OptSidecarClient.connect(
                     "127.0.0.1:" + s.port())) {
            for (String name : List.of("good", "bad")) {
                client.register(TestData.spec(name, "Adam", TestData.hp("lr", 0.01), 10).build(),
                        List.of(dev.optsidecar.client.TensorData.of(new float[10])));
            }
        }
        dev.optsidecar.server.durability.UnloadableSnapshotTest.damage(dir.resolve("bad").resolve("000001"),
                "undeclared-counter");
        run("--port", "0", "--state-dir", dir.toString(), "--restore", "bad")
                .assertOneLine(CANNOT_START, "cannot start: --restore bad: ", "000001", "manifest.json");
        try (ServerJar server = ServerJar.start("--port", "0", "--state-dir", dir.toString(), "--restore", "latest");
             dev.optsidecar.client.OptSidecarClient client = dev.optsidecar.client.OptSidecarClient.connect(
                     server.target())) {
            assertEquals(List.of("good"), client.list());
            assertTrue(server.log().stream().anyMatch(l -> l.contains("model 'bad' is not restored")), server.log()::toString);
        }
    }

    @Test
    void snapshotFlagsWithoutAStateDir() throws Exception {
        for (List<String> flag : List.of(List.of("--snapshot-every-steps", "10"), List.of("--snapshot-interval", "60"),
                List.of("--journal", "write"), List.of("--snapshot-keep", "5"), List.of("--restore", "latest"))) {
            run(flag.toArray(String[]::new)).assertOneLine(USAGE, flag.get(0) + " needs --state-dir");
        }
    }

    @Test
    void aMemoryLimitAboveTheMaximumHeap() throws Exception {
        new Result(List.of("-Xmx128m"), List.of("--memory-limit", "1g"))
                .assertOneLine(USAGE, "--memory-limit 1073741824 bytes is above the JVM's maximum heap", "-Xmx");
    }

    private static Result run(String... flags) throws Exception {
        return new Result(List.of(), List.of(flags));
    }

    /** The jar run to its end, with its exit code and stderr. */
    private static final class Result {
        final int exit;
        final String stderr;

        Result(List<String> jvmFlags, List<String> flags) throws Exception {
            List<String> command = new ArrayList<>(List.of(ServerJar.java()));
            command.addAll(jvmFlags);
            command.addAll(List.of("-jar", ServerJar.jar().toString()));
            command.addAll(flags);
            Process p = new ProcessBuilder(command).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
            CompletableFuture<String> err = CompletableFuture.supplyAsync(() -> {
                try {
                    return new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
                } catch (IOException e) {
                    return e.toString();
                }
            });
            if (!p.waitFor(60, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                throw new AssertionError("still running: " + flags);
            }
            exit = p.exitValue();
            stderr = err.get(10, TimeUnit.SECONDS);
        }

        String stderr() {
            return stderr;
        }

        List<String> lines() {
            return stderr.lines().toList();
        }

        /** Exit {@code code}; stderr one line naming the problem, plus at most a hint, never a stack trace. */
        void assertOneLine(int code, String... names) {
            assertEquals(code, exit, stderr);
            List<String> lines = lines();
            assertTrue(lines.size() == 1 || lines.size() == 2 && lines.get(1).contains("--help"), stderr);
            assertTrue(lines.get(0).startsWith("optsidecar-server: "), stderr);
            for (String name : names) {
                assertTrue(lines.get(0).contains(name), "'" + name + "' not in: " + stderr);
            }
        }
    }
}
