package dev.optsidecar.server;

import io.grpc.ServerCredentials;
import io.grpc.TlsServerCredentials;
import io.grpc.util.AdvancedTlsX509KeyManager;
import io.grpc.util.AdvancedTlsX509TrustManager;
import io.grpc.util.CertificateUtils;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.security.GeneralSecurityException;
import java.security.PrivateKey;
import java.security.Signature;
import java.security.cert.X509Certificate;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.logging.Logger;

/**
 * TLS for the TCP listeners: the server's certificate and key (PEM), and for mutual TLS the CA
 * that client certificates must chain to. The files are checked every {@code reloadEvery} and
 * re-read into grpc's advanced TLS managers when a modification time changes, so a rotated
 * certificate is used by the next connection without a restart; connections already open keep
 * theirs. (grpc's own file polling waits at least a minute and only when both files changed.) A
 * certificate whose key does not match yet, half through a rotation, is not taken until it does.
 */
public final class ServerTls implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(ServerTls.class.getName());
    /** How often Main's server looks for rotated certificate files. */
    public static final Duration DEFAULT_RELOAD = Duration.ofSeconds(5);

    private final AdvancedTlsX509KeyManager keys = new AdvancedTlsX509KeyManager();
    private final AdvancedTlsX509TrustManager clientTrust;
    private final ScheduledExecutorService reloader = Executors.newSingleThreadScheduledExecutor(r -> {
        Thread t = new Thread(r, "optsidecar-tls-reload");
        t.setDaemon(true);
        return t;
    });
    private final Path certFile;
    private final Path keyFile;
    private final Path clientCaFile;
    /** The modification times of the files last loaded: cert, key, client CA. */
    private List<FileTime> loaded;

    private ServerTls(Path certFile, Path keyFile, Path clientCaFile, AdvancedTlsX509TrustManager clientTrust) {
        this.certFile = certFile;
        this.keyFile = keyFile;
        this.clientCaFile = clientCaFile;
        this.clientTrust = clientTrust;
    }

    /**
     * Loads the certificate and key (and the client CA, null for TLS without client certificates)
     * and starts watching them.
     *
     * @throws IllegalArgumentException naming the flag and the file when one is missing, unreadable
     *                                  or not valid PEM, or when the key is not the certificate's
     */
    public static ServerTls load(Path cert, Path key, Path clientCa, Duration reloadEvery) {
        AdvancedTlsX509TrustManager trust = null;
        if (clientCa != null) {
            try {
                trust = AdvancedTlsX509TrustManager.newBuilder()
                        .setVerification(AdvancedTlsX509TrustManager.Verification.CERTIFICATE_ONLY_VERIFICATION)
                        .build();
            } catch (GeneralSecurityException e) {
                throw new IllegalStateException(e);
            }
        }
        ServerTls tls = new ServerTls(cert, key, clientCa, trust);
        try {
            tls.reload();
        } catch (RuntimeException e) {
            tls.close();
            throw e;
        }
        long millis = Math.max(1, reloadEvery.toMillis());
        tls.reloader.scheduleWithFixedDelay(tls::reloadIfChanged, millis, millis, TimeUnit.MILLISECONDS);
        return tls;
    }

    /** Loads the files into the managers; throws naming the flag and file when one is not usable. */
    private void reload() {
        List<FileTime> times = modificationTimes();
        X509Certificate[] chain = certificates("--tls-cert", certFile);
        PrivateKey privateKey = privateKey(keyFile);
        checkKeyMatches(chain[0], privateKey, certFile, keyFile);
        if (clientTrust != null) {
            X509Certificate[] roots = certificates("--tls-client-ca", clientCaFile);
            try {
                clientTrust.updateTrustCredentials(roots);
            } catch (IOException | GeneralSecurityException e) {
                throw new IllegalArgumentException("--tls-client-ca " + clientCaFile + ": " + Main.describe(e));
            }
        }
        try {
            chain[0].checkValidity();
        } catch (java.security.cert.CertificateException e) {
            // Served all the same (a rotation may be on its way), but clients will refuse it.
            LOG.warning(() -> "TLS: --tls-cert " + certFile + " is not valid now: " + e.getMessage());
        }
        keys.updateIdentityCredentials(chain, privateKey);
        loaded = times;
    }

    private void reloadIfChanged() {
        try {
            if (!modificationTimes().equals(loaded)) {
                reload();
                LOG.info(() -> "TLS: reloaded " + certFile + (clientCaFile == null ? "" : " and " + clientCaFile));
            }
        } catch (RuntimeException e) {
            // Half through a rotation, or a bad file: keep serving with what was loaded, and look again
            // (an exception escaping would cancel the periodic check).
            LOG.warning(() -> "TLS: keeping the certificates loaded before; " + e.getMessage());
        }
    }

    private List<FileTime> modificationTimes() {
        List<FileTime> times = new ArrayList<>();
        for (Path file : new Path[] {certFile, keyFile, clientCaFile}) {
            try {
                times.add(file == null ? null : Files.getLastModifiedTime(file));
            } catch (IOException e) {
                times.add(null); // missing for now: open() names it when it is read
            }
        }
        return times;
    }

    /** What a TCP listener serves with: TLS, and with a client CA, client certificates required. */
    public ServerCredentials credentials() {
        TlsServerCredentials.Builder b = TlsServerCredentials.newBuilder().keyManager(keys);
        if (clientTrust != null) {
            b.trustManager(clientTrust).clientAuth(TlsServerCredentials.ClientAuth.REQUIRE);
        }
        return b.build();
    }

    /**
     * The same certificates for a JDK TLS server (the HTTP endpoint): its key manager follows the
     * rotations this object loads, and with a client CA it trusts only certificates that chain to it.
     */
    public javax.net.ssl.SSLContext sslContext() {
        try {
            javax.net.ssl.SSLContext context = javax.net.ssl.SSLContext.getInstance("TLS");
            context.init(new javax.net.ssl.KeyManager[] {keys},
                    clientTrust == null ? null : new javax.net.ssl.TrustManager[] {clientTrust}, null);
            return context;
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("TLS: cannot set up the HTTP endpoint's TLS: " + e.getMessage(), e);
        }
    }

    public boolean requiresClientCertificates() {
        return clientTrust != null;
    }

    private static X509Certificate[] certificates(String flag, Path file) {
        try (InputStream in = open(flag, file)) {
            X509Certificate[] certs = CertificateUtils.getX509Certificates(in);
            if (certs.length == 0) {
                throw new IllegalArgumentException(flag + " " + file + ": no PEM certificate in it");
            }
            return certs;
        } catch (IOException | GeneralSecurityException e) {
            throw new IllegalArgumentException(flag + " " + file + ": not a PEM certificate (" + Main.describe(e) + ")");
        }
    }

    private static PrivateKey privateKey(Path file) {
        try (InputStream in = open("--tls-key", file)) {
            return CertificateUtils.getPrivateKey(in);
        } catch (IOException | GeneralSecurityException | RuntimeException e) {
            if (e instanceof IllegalArgumentException iae && iae.getMessage().startsWith("--tls-key")) {
                throw iae;
            }
            throw new IllegalArgumentException("--tls-key " + file
                    + ": not a PEM private key in PKCS#8 (-----BEGIN PRIVATE KEY-----; " + Main.describe(e) + ")");
        }
    }

    private static InputStream open(String flag, Path file) throws IOException {
        if (!Files.isRegularFile(file) || !Files.isReadable(file)) {
            throw new IllegalArgumentException(flag + " " + file + ": "
                    + (Files.exists(file) ? "not a readable file" : "no such file"));
        }
        return Files.newInputStream(file);
    }

    /** A key that is not the certificate's fails every handshake with an obscure error; say so at startup. */
    private static void checkKeyMatches(X509Certificate cert, PrivateKey key, Path certFile, Path keyFile) {
        String algorithm = switch (key.getAlgorithm()) {
            case "RSA" -> "SHA256withRSA";
            case "EC" -> "SHA256withECDSA";
            default -> null; // another kind of key: the handshake will tell
        };
        if (algorithm == null) {
            return;
        }
        boolean matches;
        try {
            byte[] probe = "optsidecar".getBytes(java.nio.charset.StandardCharsets.US_ASCII);
            Signature sign = Signature.getInstance(algorithm);
            sign.initSign(key);
            sign.update(probe);
            byte[] signature = sign.sign();
            Signature verify = Signature.getInstance(algorithm);
            verify.initVerify(cert.getPublicKey());
            verify.update(probe);
            matches = verify.verify(signature);
        } catch (GeneralSecurityException e) {
            matches = false;
        }
        if (!matches) {
            throw new IllegalArgumentException("--tls-key " + keyFile + " is not the key of --tls-cert " + certFile);
        }
    }

    /** Stops watching the files. */
    @Override
    public void close() {
        reloader.shutdownNow();
    }
}
