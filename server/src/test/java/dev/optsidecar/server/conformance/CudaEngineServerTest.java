package dev.optsidecar.server.conformance;

import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.ServerInfoResponse;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.cuda.EmulatedCuda;
import io.grpc.Status;
import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.function.Supplier;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The server on the CUDA engine (its Java side over the CPU emulation of the device, with the
 * real per-element arithmetic): every shared reference case passes, ServerInfo names the engine
 * and device, and a model the device cannot hold is refused with RESOURCE_EXHAUSTED, leaving room
 * for the next.
 */
class CudaEngineServerTest {
    private static Supplier<Engine> emulatedDevice(long bytes) {
        return () -> {
            try {
                return EmulatedCuda.open(bytes);
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        };
    }

    @Test
    void everyReferenceCasePassesOnTheCudaEngine() throws Exception {
        ByteArrayOutputStream printed = new ByteArrayOutputStream();
        ConformanceRunner.Summary summary;
        try (SidecarFixture server = SidecarFixture.inProcess(2, 1L << 30).engine(emulatedDevice(1L << 30)).start();
             PrintStream out = new PrintStream(printed, true, StandardCharsets.UTF_8)) {
            ServerInfoResponse info = server.blocking().serverInfo(ServerInfoRequest.getDefaultInstance());
            assertEquals("cuda", info.getEngine());
            assertTrue(info.getDevice().startsWith("CPU emulation (device 0"), info.getDevice());
            summary = new ConformanceRunner(server.client(), out).runAll(ReferenceConformanceTest.referenceDir());
        }
        String report = printed.toString(StandardCharsets.UTF_8);
        assertEquals(List.of(), summary.names("FAIL"), report);
        assertEquals(List.of(), summary.names("SKIP"), report);
        assertTrue(summary.passed() >= 30, report);
    }

    @Test
    void aModelTheDeviceCannotHoldIsResourceExhausted() throws Exception {
        // 16 MiB of device, 4 MiB of it the engine's view scratch: 2M floats of θ fit, their gradient does not.
        try (SidecarFixture server = SidecarFixture.inProcess(2, 1L << 30).engine(emulatedDevice(16L << 20)).start()) {
            assertStatus(Status.Code.RESOURCE_EXHAUSTED, () -> server.client().register(
                    TestData.spec("big", "Adam", TestData.hp("lr", 0.01), 2_000_000).build(),
                    List.of(TensorData.of(new float[2_000_000]))), "out of memory", "the device is full");
            server.client().register(TestData.spec("small", "Adam", TestData.hp("lr", 0.01), 10_000).build(),
                    List.of(TensorData.of(new float[10_000])));
            assertEquals(List.of("small"), server.client().list());
            var info = server.client().describe("small"); // Describe names the engine that holds the model
            assertEquals("cuda", info.getEngine());
            assertTrue(!info.getDevice().isEmpty(), info::getDevice);
        }
    }
}
