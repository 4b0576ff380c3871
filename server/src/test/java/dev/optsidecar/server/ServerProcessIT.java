package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import io.grpc.ManagedChannel;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.reflection.v1.ServerReflectionGrpc;
import io.grpc.reflection.v1.ServerReflectionRequest;
import io.grpc.reflection.v1.ServerReflectionResponse;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The shaded jar, started as its own process the way the README says, served over a real socket. */
class ServerProcessIT {
    private ServerJar server;

    @AfterEach
    void stop() throws InterruptedException {
        if (server != null) {
            server.close();
        }
    }

    @Test
    void helpListsTheFlags() throws Exception {
        Process help = new ProcessBuilder(ServerJar.java(), "-jar", ServerJar.jar().toString(), "--help").redirectErrorStream(true).start();
        String text = new String(help.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(help.waitFor(30, TimeUnit.SECONDS));
        assertEquals(0, help.exitValue());
        for (String flag : List.of("--port", "--bind", "--threads", "--memory-limit", "conformance", "bench")) {
            assertTrue(text.contains(flag), "--help lacks " + flag + ":\n" + text);
        }
        assertTrue(text.contains("default: 50051") && text.contains("default: 127.0.0.1"), text);
    }

    @Test
    void servesHealthReflectionAndSteps() throws Exception {
        server = ServerJar.start("--port", "0", "--threads", "2", "--memory-limit", "256m");
        ManagedChannel channel = NettyChannelBuilder.forAddress("127.0.0.1", server.port()).usePlaintext().build();
        try {
            HealthCheckResponse health = HealthGrpc.newBlockingStub(channel)
                    .check(HealthCheckRequest.newBuilder().setService(OptimizerGrpc.SERVICE_NAME).build());
            assertEquals(HealthCheckResponse.ServingStatus.SERVING, health.getStatus());
            assertTrue(listServices(channel).contains(OptimizerGrpc.SERVICE_NAME));

            OptSidecarClient client = new OptSidecarClient(channel);
            float[] w = TestData.random(1000, 1);
            client.register(TestData.spec("proc", "RAdam", TestData.hp("lr", 0.01), 1000).build(), TestData.data(w));
            List<float[]> grads = List.of(TestData.random(1000, 2), TestData.random(1000, 3));
            float[] out = new float[1000];
            try (Trainer trainer = client.trainer("proc", "it")) {
                for (float[] g : grads) {
                    trainer.step(TestData.data(g), List.of(TensorData.of(out)));
                }
            }
            float[] expected = TestData.applyLocally("RAdam", TestData.hp("lr", 0.01), w, grads, new double[] {0.01, 0.01});
            org.junit.jupiter.api.Assertions.assertArrayEquals(expected, out);
        } finally {
            channel.shutdownNow();
        }
        // SIGTERM: the shutdown hook stops the server cleanly
        assertTrue(server.stopsOnSigterm(20), "server did not stop on SIGTERM");
    }

    /** The conformance command, run as a process against the served jar with --target. */
    @Test
    void conformanceCommandAgainstARunningServer() throws Exception {
        server = ServerJar.start("--port", "0");
        String reference = System.getProperty("optsidecar.reference.dir", "../../shared/reference");
        Process run = new ProcessBuilder(ServerJar.java(), "-jar", ServerJar.jar().toString(), "conformance", reference,
                "--target", server.target()).redirectErrorStream(true).start();
        String text = new String(run.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(run.waitFor(120, TimeUnit.SECONDS));
        assertEquals(0, run.exitValue(), text);
        String last = text.strip().lines().reduce((a, b) -> b).orElse("");
        assertTrue(last.matches("conformance: \\d+ passed, 0 failed"), text);
        assertTrue(text.contains("PASS  radam "), text);
    }

    private static List<String> listServices(ManagedChannel channel) throws Exception {
        CompletableFuture<List<String>> names = new CompletableFuture<>();
        StreamObserver<ServerReflectionRequest> requests = ServerReflectionGrpc.newStub(channel)
                .serverReflectionInfo(new StreamObserver<>() {
                    @Override
                    public void onNext(ServerReflectionResponse r) {
                        names.complete(r.getListServicesResponse().getServiceList().stream()
                                .map(s -> s.getName()).toList());
                    }

                    @Override
                    public void onError(Throwable t) {
                        names.completeExceptionally(t);
                    }

                    @Override
                    public void onCompleted() {
                    }
                });
        requests.onNext(ServerReflectionRequest.newBuilder().setListServices("").build());
        List<String> result = names.get(20, TimeUnit.SECONDS);
        requests.onCompleted();
        return result;
    }
}
