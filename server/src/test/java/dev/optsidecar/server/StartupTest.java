package dev.optsidecar.server;

import dev.optsidecar.proto.v1.ListRequest;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StateDir;
import dev.optsidecar.server.durability.StepJournal;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** What a probe or an operator sees while the server starts: health, the refused calls, reflection. */
class StartupTest {
    @Test
    void healthIsNotServingUntilTheRestoreIsDone(@TempDir Path dir) throws Exception {
        Persistence.Options durable = new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, true);
        try (SidecarFixture f = SidecarFixture.inProcess(durable, List.of()).start()) {
            f.client().register(TestData.spec("kept", "SGD", TestData.hp("lr", 0.1), 100).build(),
                    TestData.data(TestData.random(100, 1)));
        }
        String name = InProcessServerBuilder.generateName();
        ManagedChannel channel = InProcessChannelBuilder.forName(name).build();
        try (CpuEngine engine = new CpuEngine(1)) {
            SidecarServer server = SidecarServer.listen(List.of(InProcessServerBuilder.forName(name)), engine, 1L << 30, durable, dev.optsidecar.server.model.Limits.DEFAULTS);
            try {
                HealthGrpc.HealthBlockingStub health = HealthGrpc.newBlockingStub(channel);
                assertEquals(ServingStatus.NOT_SERVING, status(health, ""));
                assertEquals(ServingStatus.NOT_SERVING, status(health, OptimizerGrpc.SERVICE_NAME));
                StatusRuntimeException refused = assertThrows(StatusRuntimeException.class,
                        () -> OptimizerGrpc.newBlockingStub(channel).list(ListRequest.getDefaultInstance()));
                assertEquals(Status.Code.UNAVAILABLE, refused.getStatus().getCode());

                server.restoreThenServe(List.of("latest"));
                assertEquals(ServingStatus.SERVING, status(health, ""));
                assertEquals(ServingStatus.SERVING, status(health, OptimizerGrpc.SERVICE_NAME));
                assertEquals(List.of("kept"),
                        OptimizerGrpc.newBlockingStub(channel).list(ListRequest.getDefaultInstance()).getModelsList());
            } finally {
                server.close();
            }
        } finally {
            channel.shutdownNow();
        }
    }

    @Test
    void aFailedRestoreStopsTheStartNamingTheModel(@TempDir Path dir) throws Exception {
        Persistence.Options durable = new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, true);
        try (CpuEngine engine = new CpuEngine(1)) {
            IOException e = assertThrows(IOException.class, () -> SidecarServer.start(
                    InProcessServerBuilder.forName(InProcessServerBuilder.generateName()), engine, 1L << 30, durable,
                    List.of("missing")));
            assertTrue(e.getMessage().startsWith("--restore missing: ") && e.getMessage().contains("no snapshots"),
                    e.getMessage());
        }
    }

    @Test
    void aStateDirThatIsAFileOrCannotBeCreatedIsRefused(@TempDir Path dir) throws Exception {
        Path file = Files.writeString(dir.resolve("file"), "x");
        IOException notDir = assertThrows(IOException.class, () -> StateDir.checkUsable(file));
        assertEquals("state directory " + file + " is not a directory", notDir.getMessage());
        IOException notWritable = assertThrows(IOException.class, () -> StateDir.checkUsable(file.resolve("sub")));
        assertTrue(notWritable.getMessage().startsWith("state directory " + file.resolve("sub") + " is not writable: "),
                notWritable.getMessage());
        StateDir.checkUsable(dir.resolve("new"));
        try (var left = Files.list(dir.resolve("new"))) {
            assertEquals(0, left.count(), "the probe file is deleted");
        }
    }

    @Test
    void reflectionListsTheServicesThroughV1AndV1alpha() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            ManagedChannel channel = f.channel();
            List<String> expected = List.of(OptimizerGrpc.SERVICE_NAME, HealthGrpc.SERVICE_NAME,
                    io.grpc.reflection.v1.ServerReflectionGrpc.SERVICE_NAME,
                    io.grpc.reflection.v1alpha.ServerReflectionGrpc.SERVICE_NAME);
            List<String> v1 = listV1(channel);
            List<String> v1alpha = listV1alpha(channel);
            assertTrue(v1.containsAll(expected), v1.toString());
            assertTrue(v1alpha.containsAll(expected), v1alpha.toString());
        }
    }

    private static ServingStatus status(HealthGrpc.HealthBlockingStub health, String service) {
        return health.check(HealthCheckRequest.newBuilder().setService(service).build()).getStatus();
    }

    private static List<String> listV1(ManagedChannel channel) throws Exception {
        CompletableFuture<List<String>> names = new CompletableFuture<>();
        StreamObserver<io.grpc.reflection.v1.ServerReflectionRequest> requests =
                io.grpc.reflection.v1.ServerReflectionGrpc.newStub(channel).serverReflectionInfo(
                        new Collect<>(names, r -> r.getListServicesResponse().getServiceList().stream()
                                .map(s -> s.getName()).toList()));
        requests.onNext(io.grpc.reflection.v1.ServerReflectionRequest.newBuilder().setListServices("").build());
        List<String> result = names.get(20, TimeUnit.SECONDS);
        requests.onCompleted();
        return result;
    }

    @SuppressWarnings("deprecation")
    private static List<String> listV1alpha(ManagedChannel channel) throws Exception {
        CompletableFuture<List<String>> names = new CompletableFuture<>();
        StreamObserver<io.grpc.reflection.v1alpha.ServerReflectionRequest> requests =
                io.grpc.reflection.v1alpha.ServerReflectionGrpc.newStub(channel).serverReflectionInfo(
                        new Collect<>(names, r -> r.getListServicesResponse().getServiceList().stream()
                                .map(s -> s.getName()).toList()));
        requests.onNext(io.grpc.reflection.v1alpha.ServerReflectionRequest.newBuilder().setListServices("").build());
        List<String> result = names.get(20, TimeUnit.SECONDS);
        requests.onCompleted();
        return result;
    }

    /** Completes {@code names} from the first response. */
    private record Collect<R>(CompletableFuture<List<String>> names, java.util.function.Function<R, List<String>> read)
            implements StreamObserver<R> {
        @Override
        public void onNext(R response) {
            names.complete(read.apply(response));
        }

        @Override
        public void onError(Throwable t) {
            names.completeExceptionally(t);
        }

        @Override
        public void onCompleted() {
        }
    }
}
