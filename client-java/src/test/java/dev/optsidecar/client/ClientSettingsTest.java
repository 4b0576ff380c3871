package dev.optsidecar.client;

import dev.optsidecar.proto.v1.ListRequest;
import dev.optsidecar.proto.v1.ListResponse;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.Test;

import java.net.InetSocketAddress;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The connection settings: the bearer token on the wire, settings from the environment, mistakes refused. */
class ClientSettingsTest {
    @Test
    void theTokenGoesWithEveryCall() throws Exception {
        List<String> seen = Collections.synchronizedList(new ArrayList<>());
        ServerInterceptor record = new ServerInterceptor() {
            @Override
            public <Q, R> ServerCall.Listener<Q> interceptCall(ServerCall<Q, R> call, Metadata headers,
                                                               ServerCallHandler<Q, R> next) {
                seen.add(String.valueOf(headers.get(OptSidecarClientBuilder.AUTHORIZATION)));
                return next.startCall(call, headers);
            }
        };
        OptimizerGrpc.OptimizerImplBase listsNothing = new OptimizerGrpc.OptimizerImplBase() {
            @Override
            public void list(ListRequest request, StreamObserver<ListResponse> responses) {
                responses.onNext(ListResponse.getDefaultInstance());
                responses.onCompleted();
            }
        };
        Server server = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
                .addService(ServerInterceptors.intercept(listsNothing, record)).build().start();
        String target = "127.0.0.1:" + server.getPort();
        try {
            try (OptSidecarClient client = OptSidecarClient.builder(target).token("s3cret").connect()) {
                client.list();
                client.list();
            }
            try (OptSidecarClient client = OptSidecarClientBuilder.fromEnvironment(
                    Map.of("OPTSIDECAR_TARGET", target, "OPTSIDECAR_TOKEN", "from-env")).connect()) {
                client.list();
            }
            try (OptSidecarClient client = OptSidecarClient.connect(target)) {
                client.list();
            }
        } finally {
            server.shutdownNow().awaitTermination();
        }
        assertEquals(List.of("Bearer s3cret", "Bearer s3cret", "Bearer from-env", "null"), seen);
    }

    @Test
    void settingsThatDoNotGoTogetherAreRefused() {
        Path pem = Path.of("client.pem");
        IllegalArgumentException noCa = assertThrows(IllegalArgumentException.class,
                () -> OptSidecarClient.builder("127.0.0.1:1").clientCertificate(pem, pem).connect());
        assertTrue(noCa.getMessage().contains("needs a TLS CA"), noCa.getMessage());
        assertThrows(IllegalArgumentException.class, () -> OptSidecarClientBuilder.fromEnvironment(
                Map.of("OPTSIDECAR_TLS_CA", "ca.pem", "OPTSIDECAR_TLS_CERT", "c.pem")).connect());
        IllegalArgumentException unix = assertThrows(IllegalArgumentException.class,
                () -> OptSidecarClient.connect("unix:/run/optsidecar.sock", Path.of("ca.pem")));
        assertTrue(unix.getMessage().contains("plaintext"), unix.getMessage());
        java.io.UncheckedIOException missing = assertThrows(java.io.UncheckedIOException.class,
                () -> OptSidecarClient.connect("127.0.0.1:1", Path.of("no-such-ca.pem")));
        assertTrue(missing.getMessage().contains("no-such-ca.pem"), missing.getMessage());
    }
}
