package dev.optsidecar.server.auth;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.ServerError;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ListRequest;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.ServerTls;
import dev.optsidecar.server.tls.TestPki;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.api.io.TempDir;

import java.net.Inet4Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.NetworkInterface;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static dev.optsidecar.server.SidecarFixture.awaitTrue;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * Tokens scoped to models, over a socket with the real client: a token used on a model it was not
 * given, what List shows each token, missing and unknown tokens, health without a token, a token
 * file rotated under running clients, and tokens sent in plaintext from another host.
 */
class TokenAccessTest {
    @TempDir
    Path dir;

    private static TokenFiles scoped() {
        return TokenFiles.of()
                .token("ops", "ops-token", "admin", "*")
                .token("team-a", "team-a-token", "trainer", "a-*")
                .token("viewer", "viewer-token", "reader", "a-1", "shared-*");
    }

    private static void registerEach(OptSidecarClient admin, String... models) {
        for (String m : models) {
            admin.register(TokenServer.spec(m), TokenServer.data(TokenServer.weights(1)));
        }
    }

    private static ServerError refused(Status.Code code, Executable call) {
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class, call);
        ServerError error = ServerError.of(e);
        assertEquals(code, error.code(), error::toString);
        return error;
    }

    private static float[][] zeros() {
        return new float[][] {new float[6], new float[2]};
    }

    @Test
    void aTokenForSomeModelsCannotUseAnother() throws Exception {
        try (TokenServer s = TokenServer.start(dir, scoped())) {
            OptSidecarClient admin = s.client("ops-token");
            registerEach(admin, "a-1", "b-1");
            OptSidecarClient teamA = s.client("team-a-token");
            assertEquals("a-1", teamA.describe("a-1").getName());
            try (Trainer t = teamA.trainer("a-1", "team-a")) {
                assertEquals(1, t.step(TokenServer.data(TokenServer.weights(0.5f)), TokenServer.data(zeros()))
                        .getVersion());
            }

            ServerError describe = refused(Status.Code.PERMISSION_DENIED, () -> teamA.describe("b-1"));
            assertEquals("model: Describe on model 'b-1' needs role reader; token 'team-a' has role trainer only on"
                    + " models matching a-*", describe.message());
            assertEquals(Map.of("field", "model", "model", "b-1", "required_role", "reader", "role", "trainer",
                    "token", "team-a"), describe.metadata());
            ServerError step = refused(Status.Code.PERMISSION_DENIED, () -> {
                try (Trainer t = teamA.trainer("b-1", "team-a")) {
                    t.step(TokenServer.data(TokenServer.weights(0.5f)), TokenServer.data(zeros()));
                }
            });
            assertEquals("b-1", step.metadata().get("model")); // (the client reads the model's layout first)
            assertEquals(0, admin.describe("b-1").getVersion(), "the refused stream stepped nothing");

            // Fork reads its source and trains its target: both must be the token's.
            ServerError intoOther = refused(Status.Code.PERMISSION_DENIED, () -> teamA.fork("a-1", "b-copy", null));
            assertEquals(List.of("new_model", "b-copy", "trainer"), List.of(intoOther.field(),
                    intoOther.metadata().get("model"), intoOther.metadata().get("required_role")));
            ServerError fromOther = refused(Status.Code.PERMISSION_DENIED, () -> teamA.fork("b-1", "a-copy", null));
            assertEquals(List.of("model", "b-1", "reader"), List.of(fromOther.field(),
                    fromOther.metadata().get("model"), fromOther.metadata().get("required_role")));
            assertEquals(1, teamA.fork("a-1", "a-copy", null).getVersion());
            refused(Status.Code.PERMISSION_DENIED, () -> teamA.register(TokenServer.spec("b-2"),
                    TokenServer.data(TokenServer.weights(1))));
            assertEquals(List.of("a-1", "a-copy", "b-1"), admin.list().stream().sorted().toList());

            // A reader of a-1 may read it, but not step it, and nothing of b-1.
            OptSidecarClient viewer = s.client("viewer-token");
            assertEquals(1, viewer.describe("a-1").getVersion());
            ServerError readerStep = refused(Status.Code.PERMISSION_DENIED, () -> {
                try (Trainer t = viewer.trainer("a-1", "viewer")) {
                    t.step(TokenServer.data(TokenServer.weights(0.5f)), TokenServer.data(zeros()));
                }
            });
            assertEquals("open.model: Step on model 'a-1' needs role trainer; token 'viewer' has role reader",
                    readerStep.message());
            refused(Status.Code.PERMISSION_DENIED, () -> viewer.pull("b-1", TokenServer.data(zeros())));
        }
    }

    @Test
    void listShowsEachTokenOnlyTheModelsItMayRead() throws Exception {
        try (TokenServer s = TokenServer.start(dir, scoped())) {
            OptSidecarClient admin = s.client("ops-token");
            registerEach(admin, "a-1", "a-2", "b-1", "shared-x");
            assertEquals(List.of("a-1", "a-2", "b-1", "shared-x"), sorted(admin.list()));
            assertEquals(List.of("a-1", "a-2"), sorted(s.client("team-a-token").list()));
            assertEquals(List.of("a-1", "shared-x"), sorted(s.client("viewer-token").list()));
            // Every model was snapshotted at registration: the listing of all snapshots is filtered the same way.
            assertEquals(List.of("a-1", "shared-x"), sorted(s.client("viewer-token").listSnapshots("").stream()
                    .map(SnapshotInfo::getModel).toList()));
            assertEquals(List.of("a-1", "a-2", "b-1", "shared-x"), sorted(admin.listSnapshots("").stream()
                    .map(SnapshotInfo::getModel).toList()));
        }
    }

    private static List<String> sorted(List<String> names) {
        return names.stream().sorted().toList();
    }

    @Test
    void aMissingOrUnknownTokenIsUnauthenticatedWhileHealthStaysOpen() throws Exception {
        try (TokenServer s = TokenServer.start(dir, scoped())) {
            ServerError missing = refused(Status.Code.UNAUTHENTICATED, () -> s.client(null).list());
            assertEquals(ServerError.TOKEN_MISSING, missing.reason());
            assertTrue(missing.message().contains("Bearer <token>"), missing.message());
            ServerError unknown = refused(Status.Code.UNAUTHENTICATED, () -> s.client("ops-token2").list());
            assertEquals(ServerError.TOKEN_UNKNOWN, unknown.reason());
            refused(Status.Code.UNAUTHENTICATED, () -> s.blocking(TokenFiles.sha256Hex("ops-token"))
                    .list(ListRequest.getDefaultInstance()));
            ServerError stream = refused(Status.Code.UNAUTHENTICATED, () -> {
                try (Trainer t = s.client(null).trainer("a-1", "anonymous")) {
                    t.step(TokenServer.data(TokenServer.weights(0.5f)), TokenServer.data(zeros()));
                }
            });
            assertEquals(ServerError.TOKEN_MISSING, stream.reason());

            ManagedChannel plain = NettyChannelBuilder.forTarget(s.target()).usePlaintext().build();
            try {
                assertEquals(ServingStatus.SERVING, HealthGrpc.newBlockingStub(plain).withDeadlineAfter(20, TimeUnit.SECONDS)
                        .check(HealthCheckRequest.getDefaultInstance()).getStatus(), "health needs no token");
            } finally {
                plain.shutdownNow();
            }
        }
    }

    @Test
    void aRotatedTokenFileTakesEffectUnderRunningClients() throws Exception {
        Logger log = Logger.getLogger(TokenAuthority.class.getName());
        List<String> warnings = new CopyOnWriteArrayList<>();
        Handler recorder = new Handler() {
            @Override
            public void publish(LogRecord r) {
                warnings.add(r.getLevel() + " " + r.getMessage());
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        log.addHandler(recorder);
        try (TokenServer s = TokenServer.start(dir, TokenFiles.of().token("ops", "ops-token", "admin", "*")
                .token("ci", "old-ci-token", "trainer", "*"))) {
            int port = s.server.port();
            OptSidecarClient ops = s.client("ops-token");
            registerEach(ops, "m");
            OptSidecarClient old = s.client("old-ci-token");
            try (Trainer running = old.trainer("m", "ci")) {
                assertEquals(1, running.step(TokenServer.data(TokenServer.weights(0.5f)), TokenServer.data(zeros()))
                        .getVersion());

                TokenFiles.of().token("ops", "ops-token", "admin", "*").token("ci", "new-ci-token", "trainer", "*")
                        .writeTo(s.tokenFile);
                awaitTrue("the old token refused", () -> {
                    try {
                        old.list();
                        return false;
                    } catch (StatusRuntimeException e) {
                        return e.getStatus().getCode() == Status.Code.UNAUTHENTICATED;
                    }
                });
                // The stream opened with the old token ends at its next message; nothing is applied.
                ServerError revoked = refused(Status.Code.UNAUTHENTICATED, () -> running.step(
                        TokenServer.data(TokenServer.weights(0.5f)), TokenServer.data(zeros())));
                assertEquals(ServerError.TOKEN_UNKNOWN, revoked.reason());
            }
            assertEquals(1, ops.describe("m").getVersion());
            OptSidecarClient fresh = s.client("new-ci-token");
            try (Trainer t = fresh.trainer("m", "ci")) {
                assertEquals(2, t.step(TokenServer.data(TokenServer.weights(0.5f)), TokenServer.data(zeros()))
                        .getVersion());
            }

            // A broken file keeps the tokens in force, and says why.
            Files.writeString(s.tokenFile.resolveSibling("broken.json"), "{\"tokens\": [{\"name\": \"x\"}");
            Files.move(s.tokenFile.resolveSibling("broken.json"), s.tokenFile,
                    java.nio.file.StandardCopyOption.REPLACE_EXISTING, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
            awaitTrue("a warning about the broken file", () -> warnings.stream().anyMatch(w ->
                    w.startsWith("WARNING tokens: keeping the 2 tokens loaded before; --auth-tokens " + s.tokenFile
                            + ": not valid JSON")));
            assertEquals(List.of("m"), fresh.list());
            refused(Status.Code.UNAUTHENTICATED, () -> old.list());
            assertEquals(port, s.server.port(), "the same server throughout");
        } finally {
            log.removeHandler(recorder);
        }
    }

    @Test
    void aUnixSocketTakesTokens() throws Exception {
        Path socket = dir.resolve("api.sock");
        TokenAuthority tokens = TokenAuthority.load(scoped().writeTo(dir.resolve("tokens.json")), TokenServer.RELOAD);
        try (var s = dev.optsidecar.server.SocketServer.start(List.of(new dev.optsidecar.server.ListenAddress.Unix(socket)),
                new dev.optsidecar.server.SocketServer.Exposure(null, null, true, tokens), 1, 1L << 30, null, List.of(),
                dev.optsidecar.server.model.Limits.DEFAULTS);
             OptSidecarClient viewer = OptSidecarClient.builder("unix://" + socket).token("viewer-token").connect();
             OptSidecarClient anonymous = OptSidecarClient.builder("unix://" + socket).connect()) {
            assertEquals(List.of(), viewer.list());
            assertEquals(ServerError.TOKEN_MISSING, refused(Status.Code.UNAUTHENTICATED, anonymous::list).reason());
        }
    }

    @Test
    void anApiOpenToOtherHostsWithoutTokensIsLogged() throws Exception {
        Logger log = Logger.getLogger(dev.optsidecar.server.SocketServer.class.getName());
        List<String> warnings = new CopyOnWriteArrayList<>();
        Handler recorder = new Handler() {
            @Override
            public void publish(LogRecord r) {
                if (r.getLevel() == java.util.logging.Level.WARNING) {
                    warnings.add(r.getMessage());
                }
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        log.addHandler(recorder);
        try {
            for (String bind : List.of("127.0.0.1", "0.0.0.0")) {
                try (var s = dev.optsidecar.server.SocketServer.start(bind, 0, 1, 1L << 30)) {
                    assertTrue(s.port() > 0);
                }
            }
            try (TokenServer s = TokenServer.start(dir, scoped(), "0.0.0.0", "127.0.0.1",
                    ServerTls.load(tlsCertificate().cert(), tlsCertificate().key(), null, Duration.ofSeconds(5)))) {
                assertTrue(s.server.port() > 0);
            }
        } finally {
            log.removeHandler(recorder);
        }
        assertEquals(1, warnings.size(), warnings::toString);
        assertTrue(warnings.get(0).matches("the API on 0\\.0\\.0\\.0:[1-9][0-9]* is open to other hosts without"
                + " --auth-tokens: .*"), warnings::toString);
    }

    private TestPki.Leaf leaf;

    private TestPki.Leaf tlsCertificate() throws Exception {
        if (leaf == null) {
            leaf = TestPki.newCa(Files.createDirectories(dir.resolve("pki")), "ca").server("server", 1);
        }
        return leaf;
    }

    /** This machine's first IPv4 address that is not loopback, or null. */
    private static InetAddress otherThanLoopback() throws Exception {
        for (NetworkInterface nic : NetworkInterface.networkInterfaces().toList()) {
            if (!nic.isUp() || nic.isLoopback()) {
                continue;
            }
            for (InetAddress a : nic.inetAddresses().toList()) {
                if (a instanceof Inet4Address && !a.isLoopbackAddress()) {
                    return a;
                }
            }
        }
        return null;
    }

    @Test
    void aTokenInPlaintextFromAnotherAddressIsRefusedButNotOverTls() throws Exception {
        InetAddress external = otherThanLoopback();
        assumeTrue(external != null, "this machine has no address but loopback");
        String host = external.getHostAddress();
        try (TokenServer s = TokenServer.start(dir, scoped(), "0.0.0.0", host, null)) {
            ServerError e = refused(Status.Code.UNAUTHENTICATED, () -> s.client("ops-token").list());
            assertEquals(ServerError.TOKEN_OVER_PLAINTEXT, e.reason());
            assertTrue(e.message().contains("sent in plaintext from " + host), e.message());
            // Even a token the server does not know: it travelled in the clear all the same.
            assertEquals(ServerError.TOKEN_OVER_PLAINTEXT,
                    refused(Status.Code.UNAUTHENTICATED, () -> s.client("not-a-token").list()).reason());
            try (OptSidecarClient loopback = OptSidecarClient.builder("127.0.0.1:" + s.server.port())
                    .token("ops-token").connect()) {
                assertEquals(List.of(), loopback.list());
            }
        }
        Path pkiDir = Files.createDirectory(dir.resolve("pki"));
        TestPki pki = TestPki.newCa(pkiDir, "ca");
        TestPki.Leaf cert = pki.server("server", 1);
        Path tokensDir = Files.createDirectory(dir.resolve("tls"));
        try (TokenServer s = TokenServer.start(tokensDir, scoped(), "0.0.0.0", host,
                ServerTls.load(cert.cert(), cert.key(), null, Duration.ofSeconds(5)))) {
            Metadata headers = new Metadata();
            headers.put(TokenCheck.AUTHORIZATION, "Bearer viewer-token");
            ManagedChannel tls = NettyChannelBuilder.forAddress(new InetSocketAddress(external, s.server.port()),
                            TlsChannelCredentials.newBuilder().trustManager(pki.ca().toFile()).build())
                    .overrideAuthority("localhost") // the certificate names localhost, not this address
                    .intercept(MetadataUtils.newAttachHeadersInterceptor(headers)).build();
            try {
                assertEquals(List.of(), dev.optsidecar.proto.v1.OptimizerGrpc.newBlockingStub(tls)
                        .withDeadlineAfter(20, TimeUnit.SECONDS).list(ListRequest.getDefaultInstance()).getModelsList());
            } finally {
                tls.shutdownNow();
            }
        }
    }

    @Test
    void tokensAreTakenOnlyOverTlsLoopbackOrLocalSockets() {
        Plaintext.requireSafeForTokens(new InetSocketAddress("127.0.0.1", 5), false);
        Plaintext.requireSafeForTokens(new InetSocketAddress("::1", 5), false);
        Plaintext.requireSafeForTokens(new InetSocketAddress("192.0.2.7", 5), true);
        Plaintext.requireSafeForTokens(new io.grpc.inprocess.InProcessSocketAddress("in-process"), false);
        Plaintext.requireSafeForTokens(new io.grpc.netty.shaded.io.netty.channel.unix.DomainSocketAddress("/s.sock"),
                false);
        var e = assertThrows(dev.optsidecar.server.OptError.class,
                () -> Plaintext.requireSafeForTokens(new InetSocketAddress("192.0.2.7", 5), false));
        assertEquals(dev.optsidecar.server.OptError.Reason.TOKEN_OVER_PLAINTEXT, e.reason());
        assertNotEquals("", e.getMessage());
    }
}
