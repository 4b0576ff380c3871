package dev.optsidecar.server.tls;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Certificates made at test time with the openssl command: a CA, and leaf certificates it issues
 * (P-256 keys, PEM, PKCS#8), a server's valid for localhost and 127.0.0.1.
 */
public final class TestPki {
    private final Path dir;
    private final String caName;

    private TestPki(Path dir, String caName) {
        this.dir = dir;
        this.caName = caName;
    }

    /** A new CA named {@code name}, its files in {@code dir}. */
    public static TestPki newCa(Path dir, String name) throws IOException {
        TestPki pki = new TestPki(dir, name);
        openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".pem", "-days", "2", "-subj", "/CN=" + name);
        return pki;
    }

    /** The CA's certificate (PEM). */
    public Path ca() {
        return dir.resolve(caName + ".pem");
    }

    /** A server certificate for localhost and 127.0.0.1, {@code days} valid (-1: expired yesterday). */
    public Leaf server(String name, int days) throws IOException {
        return issue(name, days, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    }

    /** A client certificate, for mutual TLS. */
    public Leaf client(String name, int days) throws IOException {
        return issue(name, days, "extendedKeyUsage=clientAuth\n");
    }

    private Leaf issue(String name, int days, String extensions) throws IOException {
        Path ext = Files.writeString(dir.resolve(name + ".ext"), extensions);
        openssl(dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name);
        openssl(dir, "x509", "-req", "-in", name + ".csr", "-CA", caName + ".pem", "-CAkey", caName + ".key",
                "-CAcreateserial", "-days", String.valueOf(days), "-extfile", ext.getFileName().toString(),
                "-out", name + ".pem");
        return new Leaf(dir.resolve(name + ".pem"), dir.resolve(name + ".key"));
    }

    /** A certificate and its private key. */
    public record Leaf(Path cert, Path key) {
    }

    private static void openssl(Path dir, String... args) throws IOException {
        List<String> command = new ArrayList<>(List.of("openssl"));
        command.addAll(List.of(args));
        Process p = new ProcessBuilder(command).directory(dir.toFile()).redirectErrorStream(true).start();
        try {
            String output = new String(p.getInputStream().readAllBytes());
            if (!p.waitFor(30, TimeUnit.SECONDS) || p.exitValue() != 0) {
                throw new IOException("openssl " + String.join(" ", args) + " failed:\n" + output);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException(e);
        }
    }
}
