package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.server.model.Limits;
import dev.optsidecar.server.tls.TestPki;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.FileTime;
import java.security.KeyStore;
import java.security.cert.CertificateExpiredException;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.time.Duration;
import java.time.Instant;
import java.util.List;

import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * TLS and mutual TLS on a real socket, with certificates from a CA made for the test: who gets
 * through, who is refused and how, and a certificate rotated under a running server.
 */
class TlsTest {
    private static final Duration RELOAD = Duration.ofMillis(100);

    @TempDir
    Path dir;
    private TestPki pki;

    @BeforeEach
    void makeCa() throws IOException {
        pki = TestPki.newCa(dir, "test-ca");
    }

    private static SocketServer start(ServerTls tls) throws IOException {
        return SocketServer.start(List.of(new ListenAddress.Tcp("127.0.0.1", 0)),
                new SocketServer.Exposure(tls, null, true), 2, 1L << 30, null, List.of(), Limits.DEFAULTS);
    }

    private static String target(SocketServer s) {
        return "localhost:" + s.port();
    }

    private static void roundTrip(OptSidecarClient client, String model) {
        client.register(StandardModel.adamSpec(model), StandardModel.tensors(StandardModel.initialWeights(1)));
        float[][] weights = StandardModel.zeros();
        try (Trainer t = client.trainer(model, "t")) {
            assertEquals(1, t.step(StandardModel.grads(1), weights).getVersion());
        }
    }

    private static StatusRuntimeException refused(OptSidecarClient client) {
        return assertThrows(StatusRuntimeException.class, () -> client.list());
    }

    private static boolean causedBy(Throwable e, Class<? extends Throwable> type) {
        for (Throwable t = e; t != null; t = t.getCause() == t ? null : t.getCause()) {
            if (type.isInstance(t)) {
                return true;
            }
        }
        return false;
    }

    @Test
    void aClientTrustingTheCaTrainsOverTls() throws Exception {
        TestPki.Leaf server = pki.server("server", 1);
        try (SocketServer s = start(ServerTls.load(server.cert(), server.key(), null, RELOAD));
             OptSidecarClient client = OptSidecarClient.connect(target(s), pki.ca())) {
            roundTrip(client, "over-tls");
            assertEquals(List.of("over-tls"), client.list());
            assertEquals("CN=server", serverCertificate(s.port()).getSubjectX500Principal().getName());
        }
    }

    @Test
    void aPlaintextClientIsRefused() throws IOException {
        TestPki.Leaf server = pki.server("server", 1);
        try (SocketServer s = start(ServerTls.load(server.cert(), server.key(), null, RELOAD));
             OptSidecarClient plaintext = OptSidecarClient.connect(target(s))) {
            assertEquals(Status.Code.UNAVAILABLE, refused(plaintext).getStatus().getCode());
        }
    }

    @Test
    void aClientTrustingAnotherCaRefusesTheServer() throws IOException {
        TestPki.Leaf server = pki.server("server", 1);
        Path otherDir = Files.createDirectory(dir.resolve("other"));
        TestPki other = TestPki.newCa(otherDir, "other-ca");
        try (SocketServer s = start(ServerTls.load(server.cert(), server.key(), null, RELOAD));
             OptSidecarClient client = OptSidecarClient.connect(target(s), other.ca())) {
            StatusRuntimeException e = refused(client);
            assertEquals(Status.Code.UNAVAILABLE, e.getStatus().getCode());
            assertTrue(causedBy(e, javax.net.ssl.SSLHandshakeException.class), e.toString());
        }
    }

    @Test
    void anExpiredServerCertificateIsRefused() throws IOException {
        TestPki.Leaf expired = pki.server("expired", -1);
        try (SocketServer s = start(ServerTls.load(expired.cert(), expired.key(), null, RELOAD));
             OptSidecarClient client = OptSidecarClient.connect(target(s), pki.ca())) {
            StatusRuntimeException e = refused(client);
            assertEquals(Status.Code.UNAVAILABLE, e.getStatus().getCode());
            assertTrue(causedBy(e, CertificateExpiredException.class), e.toString());
        }
    }

    @Test
    void mutualTlsNeedsAClientCertificateFromTheClientCa() throws IOException {
        TestPki.Leaf server = pki.server("server", 1);
        TestPki.Leaf trainer = pki.client("trainer", 1);
        TestPki.Leaf expired = pki.client("expired-trainer", -1);
        TestPki stranger = TestPki.newCa(Files.createDirectory(dir.resolve("stranger")), "stranger-ca");
        TestPki.Leaf strangerCert = stranger.client("stranger", 1);
        try (SocketServer s = start(ServerTls.load(server.cert(), server.key(), pki.ca(), RELOAD))) {
            try (OptSidecarClient anonymous = OptSidecarClient.connect(target(s), pki.ca())) {
                assertEquals(Status.Code.UNAVAILABLE, refused(anonymous).getStatus().getCode());
            }
            for (TestPki.Leaf refusedCert : List.of(expired, strangerCert)) {
                try (OptSidecarClient client = OptSidecarClient.builder(target(s)).tlsCa(pki.ca())
                        .clientCertificate(refusedCert.cert(), refusedCert.key()).connect()) {
                    assertEquals(Status.Code.UNAVAILABLE, refused(client).getStatus().getCode(),
                            refusedCert.cert().getFileName().toString());
                }
            }
            try (OptSidecarClient client = OptSidecarClient.builder(target(s)).tlsCa(pki.ca())
                    .clientCertificate(trainer.cert(), trainer.key()).connect()) {
                roundTrip(client, "mutual");
            }
        }
    }

    @Test
    void aRotatedCertificateServesNewConnectionsWhileOpenOnesGoOn() throws Exception {
        TestPki.Leaf first = pki.server("first", 1);
        TestPki.Leaf second = pki.server("second", 1);
        Path cert = Files.copy(first.cert(), dir.resolve("tls.crt"));
        Path key = Files.copy(first.key(), dir.resolve("tls.key"));
        try (SocketServer s = start(ServerTls.load(cert, key, null, RELOAD));
             OptSidecarClient open = OptSidecarClient.connect(target(s), pki.ca())) {
            assertEquals("CN=first", serverCertificate(s.port()).getSubjectX500Principal().getName());
            open.register(StandardModel.adamSpec("m"), StandardModel.tensors(StandardModel.initialWeights(2)));
            float[][] weights = StandardModel.zeros();
            try (Trainer trainer = open.trainer("m", "t")) {
                trainer.step(StandardModel.grads(1), weights);

                // Half through the rotation the new key does not match the old certificate: the
                // server keeps the old pair, and new connections still succeed with it.
                replace(second.key(), key);
                Thread.sleep(5 * RELOAD.toMillis());
                assertEquals("CN=first", serverCertificate(s.port()).getSubjectX500Principal().getName());
                try (OptSidecarClient midway = OptSidecarClient.connect(target(s), pki.ca())) {
                    assertEquals(List.of("m"), midway.list());
                }
                replace(second.cert(), cert);
                long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
                String seen;
                do {
                    Thread.sleep(50);
                    seen = serverCertificate(s.port()).getSubjectX500Principal().getName();
                } while (!seen.equals("CN=second") && System.nanoTime() < deadline);
                assertEquals("CN=second", seen, "a new connection after the rotation");

                // The trainer's stream, opened before the rotation, keeps stepping.
                assertEquals(2, trainer.step(StandardModel.grads(2), weights).getVersion());
            }
            try (OptSidecarClient fresh = OptSidecarClient.connect(target(s), pki.ca())) {
                float[][] pulled = StandardModel.zeros();
                fresh.pull("m", StandardModel.tensors(pulled));
                assertBitsEqual(weights, pulled, "the weights a new TLS connection reads");
            }
        }
    }

    /** Replaces a file as a secret mount does (a new file moved in), its mtime surely newer. */
    private static void replace(Path from, Path to) throws IOException {
        Path staged = to.resolveSibling(to.getFileName() + ".new");
        Files.copy(from, staged, StandardCopyOption.REPLACE_EXISTING);
        Files.setLastModifiedTime(staged, FileTime.from(Instant.now().plusSeconds(5)));
        Files.move(staged, to, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    /** The certificate a new TLS connection to the port is shown. */
    private X509Certificate serverCertificate(int port) throws Exception {
        KeyStore roots = KeyStore.getInstance(KeyStore.getDefaultType());
        roots.load(null, null);
        try (InputStream in = Files.newInputStream(pki.ca())) {
            roots.setCertificateEntry("ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(roots);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, trust.getTrustManagers(), null);
        try (SSLSocket socket = (SSLSocket) context.getSocketFactory().createSocket("127.0.0.1", port)) {
            SSLParameters params = socket.getSSLParameters();
            params.setApplicationProtocols(new String[] {"h2"});
            socket.setSSLParameters(params);
            socket.startHandshake();
            return (X509Certificate) socket.getSession().getPeerCertificates()[0];
        }
    }
}
