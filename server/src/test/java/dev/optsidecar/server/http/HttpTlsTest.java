package dev.optsidecar.server.http;

import dev.optsidecar.server.ServerTls;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.tls.TestPki;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.time.Duration;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The HTTP endpoint serves TLS with the API's certificates, and with a client CA requires client certificates. */
class HttpTlsTest {
    @TempDir
    Path dir;

    @Test
    void servesTlsWithTheApisCertificates() throws Exception {
        TestPki pki = TestPki.newCa(dir, "test-ca");
        TestPki.Leaf leaf = pki.server("server", 30);
        try (SidecarFixture f = SidecarFixture.inProcess().start();
             ServerTls tls = ServerTls.load(leaf.cert(), leaf.key(), null, Duration.ofSeconds(5));
             HttpApi api = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), tls, f.server().registry(), null,
                     HttpAccess.ALLOW_ALL)) {
            HttpClient trusting = HttpClient.newBuilder().sslContext(trusting(pki.ca())).build();
            HttpResponse<String> metrics = trusting.send(HttpRequest.newBuilder(
                    URI.create("https://localhost:" + api.port() + "/metrics")).build(), HttpResponse.BodyHandlers.ofString());
            assertEquals(200, metrics.statusCode());
            assertTrue(metrics.body().contains("optsidecar_memory_limit_bytes"));
            HttpClient plain = HttpClient.newHttpClient();
            assertThrows(IOException.class, () -> plain.send(HttpRequest.newBuilder(
                    URI.create("http://localhost:" + api.port() + "/metrics")).timeout(Duration.ofSeconds(5)).build(),
                    HttpResponse.BodyHandlers.ofString()));
        }
    }

    @Test
    void withAClientCaAClientWithoutACertificateIsRefused() throws Exception {
        TestPki pki = TestPki.newCa(dir, "test-ca");
        TestPki.Leaf leaf = pki.server("server", 30);
        try (SidecarFixture f = SidecarFixture.inProcess().start();
             ServerTls tls = ServerTls.load(leaf.cert(), leaf.key(), pki.ca(), Duration.ofSeconds(5));
             HttpApi api = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), tls, f.server().registry(), null,
                     HttpAccess.ALLOW_ALL)) {
            HttpClient anonymous = HttpClient.newBuilder().sslContext(trusting(pki.ca())).build();
            assertThrows(IOException.class, () -> anonymous.send(HttpRequest.newBuilder(
                    URI.create("https://localhost:" + api.port() + "/metrics")).timeout(Duration.ofSeconds(5)).build(),
                    HttpResponse.BodyHandlers.ofString()));
        }
    }

    private static SSLContext trusting(Path ca) throws Exception {
        KeyStore roots = KeyStore.getInstance(KeyStore.getDefaultType());
        roots.load(null, null);
        try (InputStream in = Files.newInputStream(ca)) {
            roots.setCertificateEntry("ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(roots);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, trust.getTrustManagers(), null);
        return context;
    }
}
