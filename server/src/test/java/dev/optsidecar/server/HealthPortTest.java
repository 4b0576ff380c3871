package dev.optsidecar.server;

import dev.optsidecar.proto.v1.ListRequest;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.model.Limits;
import dev.optsidecar.server.tls.TestPki;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/** The health-only port: the API's health status, in plaintext, and nothing else. */
class HealthPortTest {
    @TempDir
    Path dir;

    private static ServingStatus status(ManagedChannel channel) {
        return HealthGrpc.newBlockingStub(channel).withDeadlineAfter(20, TimeUnit.SECONDS)
                .check(HealthCheckRequest.newBuilder().setService("").build()).getStatus();
    }

    @Test
    void itFollowsTheApisStatusAndServesNothingElse() throws Exception {
        Persistence.Options durable = new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, true);
        String api = InProcessServerBuilder.generateName();
        String probes = InProcessServerBuilder.generateName();
        ManagedChannel apiChannel = InProcessChannelBuilder.forName(api).build();
        ManagedChannel probeChannel = InProcessChannelBuilder.forName(probes).build();
        try (CpuEngine engine = new CpuEngine(1)) {
            SidecarServer server = SidecarServer.listen(new SidecarServer.Endpoints(
                    List.of(InProcessServerBuilder.forName(api)), List.of(InProcessServerBuilder.forName(probes)), true),
                    engine, 1L << 30, durable, Limits.DEFAULTS, dev.optsidecar.server.shm.SharedMemory.off());
            try {
                assertEquals(ServingStatus.NOT_SERVING, status(probeChannel), "while restoring");
                server.restoreThenServe(List.of("latest"));
                assertEquals(ServingStatus.SERVING, status(probeChannel));
                assertEquals(ServingStatus.SERVING, status(apiChannel));
                StatusRuntimeException noApi = assertThrows(StatusRuntimeException.class,
                        () -> OptimizerGrpc.newBlockingStub(probeChannel).list(ListRequest.getDefaultInstance()));
                assertEquals(Status.Code.UNIMPLEMENTED, noApi.getStatus().getCode());
            } finally {
                server.close();
            }
            assertEquals(ServingStatus.NOT_SERVING, statusOrNotServing(probeChannel), "after shutdown");
        } finally {
            apiChannel.shutdownNow();
            probeChannel.shutdownNow();
        }
    }

    private static ServingStatus statusOrNotServing(ManagedChannel channel) {
        try {
            return status(channel);
        } catch (StatusRuntimeException e) {
            return ServingStatus.NOT_SERVING; // the server is gone
        }
    }

    @Test
    void aPlaintextProbeAnswersWhileTheApiIsTlsOnly() throws Exception {
        TestPki pki = TestPki.newCa(dir, "ca");
        TestPki.Leaf cert = pki.server("server", 1);
        ServerTls tls = ServerTls.load(cert.cert(), cert.key(), null, Duration.ofSeconds(5));
        try (SocketServer s = SocketServer.start(List.of(new ListenAddress.Tcp("127.0.0.1", 0)),
                new SocketServer.Exposure(tls, new ListenAddress.Tcp("127.0.0.1", 0), true), 2, 1L << 30, null,
                List.of(), Limits.DEFAULTS)) {
            ManagedChannel probe = Grpc.newChannelBuilderForAddress("127.0.0.1", s.healthPort(),
                    InsecureChannelCredentials.create()).build();
            ManagedChannel plaintextApi = Grpc.newChannelBuilderForAddress("127.0.0.1", s.port(),
                    InsecureChannelCredentials.create()).build();
            try {
                assertEquals(ServingStatus.SERVING, status(probe));
                StatusRuntimeException refused = assertThrows(StatusRuntimeException.class, () -> status(plaintextApi));
                assertEquals(Status.Code.UNAVAILABLE, refused.getStatus().getCode());
            } finally {
                probe.shutdownNow();
                plaintextApi.shutdownNow();
            }
        }
    }
}
