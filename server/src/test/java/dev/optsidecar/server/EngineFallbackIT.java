package dev.optsidecar.server;

import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.ServerInfoResponse;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.zip.ZipFile;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

/**
 * The packaged jar on a machine without a GPU driver: {@code --engine auto} (the default) serves on
 * the CPU, says why in one log line and reports the engine in ServerInfo; {@code --engine cuda}
 * exits at once with one line naming the reason; bad engine flags are usage errors.
 */
class EngineFallbackIT {
    @BeforeAll
    static void onlyWithoutAGpuDriver() {
        assumeFalse(Files.exists(Path.of("/proc/driver/nvidia")) || Files.exists(Path.of("/dev/nvidiactl")),
                "this machine has an NVIDIA driver");
    }

    /** The reason the jar gives here: the absent driver when it carries the CUDA library, else the library. */
    private static String expectedReason() throws IOException {
        try (ZipFile jar = new ZipFile(ServerJar.jar().toFile())) {
            return jar.getEntry("native/linux-x86_64/liboptsidecar_cuda.so") != null
                    ? "no usable CUDA driver: none is installed"
                    : "this build has no CUDA library";
        }
    }

    /** The CPU engine's bulk loops the jar runs: native where the build had g++ to compile them. */
    private static String expectedLoops() throws IOException {
        try (ZipFile jar = new ZipFile(ServerJar.jar().toFile())) {
            return jar.getEntry("native/linux-x86_64/liboptsidecar_cpu.so") != null
                    ? "native bulk loops" : "Java bulk loops (this build has no CPU loops library";
        }
    }

    /** Waits for a log line with {@code text}: the engine's is logged once the server serves, after the port's. */
    private static void awaitLine(ServerJar server, String text) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (server.log().stream().noneMatch(l -> l.contains(text)) && System.nanoTime() < deadline) {
            Thread.sleep(50);
        }
        assertTrue(server.log().stream().anyMatch(l -> l.contains(text)), () -> "no line with " + text + " in " + server.log());
    }

    @Test
    void autoServesOnTheCpuAndLogsWhyNotCuda() throws Exception {
        try (ServerJar server = ServerJar.start("--port", "0")) {
            awaitLine(server, "CUDA not used");
            List<String> lines = server.log().stream().filter(l -> l.contains("CUDA not used")).toList();
            assertEquals(1, lines.size(), server.log()::toString);
            // After the loops, whether segment steps run in place (AVX2 CPUs), then why not CUDA.
            assertTrue(lines.get(0).contains("engine: cpu, " + expectedLoops()), lines::toString);
            assertTrue(lines.get(0).contains(" (CUDA not used: " + expectedReason()), lines::toString);
            ServerInfoResponse info = serverInfo(server);
            assertEquals("cpu", info.getEngine());
            assertEquals("", info.getDevice());
        }
    }

    @Test
    void cpuServesWithoutLookingForCuda() throws Exception {
        try (ServerJar server = ServerJar.start("--port", "0", "--engine", "cpu")) {
            assertTrue(server.log().stream().noneMatch(l -> l.contains("CUDA")), server.log()::toString);
            awaitLine(server, "engine: cpu, " + expectedLoops());
            assertEquals("cpu", serverInfo(server).getEngine());
        }
    }

    @Test
    void cudaExitsAtOnceNamingTheReason() throws Exception {
        Exit r = run("--port", "0", "--engine", "cuda");
        assertEquals(Main.EXIT_CANNOT_START, r.code, r.stderr);
        assertEquals(1, r.stderr.lines().count(), r.stderr);
        assertTrue(r.stderr.startsWith("optsidecar-server: cannot start: --engine cuda: " + expectedReason()), r.stderr);
    }

    @Test
    void badEngineFlagsAreUsageErrors() throws Exception {
        for (List<String> flags : List.of(List.of("--engine", "gpu"), List.of("--device", "-1"),
                List.of("--engine", "cpu", "--device", "1"))) {
            Exit r = run(flags.toArray(String[]::new));
            assertEquals(Main.EXIT_USAGE, r.code, r.stderr);
            assertTrue(r.stderr.startsWith("optsidecar-server: " + flags.get(flags.size() - 2)), r.stderr);
        }
    }

    private static ServerInfoResponse serverInfo(ServerJar server) throws InterruptedException {
        ManagedChannel channel = ManagedChannelBuilder.forTarget(server.target()).usePlaintext().build();
        try {
            return OptimizerGrpc.newBlockingStub(channel).serverInfo(ServerInfoRequest.getDefaultInstance());
        } finally {
            channel.shutdownNow().awaitTermination(10, TimeUnit.SECONDS);
        }
    }

    private record Exit(int code, String stderr) {}

    private static Exit run(String... flags) throws Exception {
        List<String> command = new ArrayList<>(List.of(ServerJar.java(), "-jar", ServerJar.jar().toString()));
        command.addAll(List.of(flags));
        Process p = new ProcessBuilder(command).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
        String stderr = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(60, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("still running: " + List.of(flags));
        }
        return new Exit(p.exitValue(), stderr);
    }
}
