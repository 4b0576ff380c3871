package dev.optsidecar.client;

import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.TlsChannelCredentials;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.util.Map;

/**
 * How to reach a server: the target, TLS and a bearer token. The rule: the connection is TLS
 * exactly when a CA file is given ({@link #tlsCa}), which verifies the server's certificate; a
 * client certificate and key ({@link #clientCertificate}) add mutual TLS. A token is sent as
 * {@code authorization: Bearer <token>} on every call. {@link #fromEnvironment} reads all of
 * these from {@code OPTSIDECAR_TARGET}, {@code OPTSIDECAR_TLS_CA}, {@code OPTSIDECAR_TLS_CERT},
 * {@code OPTSIDECAR_TLS_KEY} and {@code OPTSIDECAR_TOKEN}.
 */
public final class OptSidecarClientBuilder {
    static final Metadata.Key<String> AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    /** The target when none is given: the server's default address. */
    public static final String DEFAULT_TARGET = "127.0.0.1:50051";

    private String target;
    private Path tlsCa;
    private Path clientCert;
    private Path clientKey;
    private String token;

    OptSidecarClientBuilder(String target) {
        this.target = target;
    }

    /** A builder with every setting taken from the OPTSIDECAR_* variables of {@code environment}, where set. */
    public static OptSidecarClientBuilder fromEnvironment(Map<String, String> environment) {
        OptSidecarClientBuilder b = new OptSidecarClientBuilder(
                environment.getOrDefault("OPTSIDECAR_TARGET", DEFAULT_TARGET));
        String ca = environment.get("OPTSIDECAR_TLS_CA");
        if (ca != null && !ca.isEmpty()) {
            b.tlsCa(Path.of(ca));
        }
        String cert = environment.get("OPTSIDECAR_TLS_CERT");
        String key = environment.get("OPTSIDECAR_TLS_KEY");
        if (cert != null && !cert.isEmpty() || key != null && !key.isEmpty()) {
            b.clientCertificate(cert == null ? null : Path.of(cert), key == null ? null : Path.of(key));
        }
        String token = environment.get("OPTSIDECAR_TOKEN");
        if (token != null && !token.isEmpty()) {
            b.token(token);
        }
        return b;
    }

    /** The process's environment: {@code fromEnvironment(System.getenv())}. */
    public static OptSidecarClientBuilder fromEnvironment() {
        return fromEnvironment(System.getenv());
    }

    /** {@code host:port}, or {@code unix:PATH} for a Unix domain socket (always plaintext). */
    public OptSidecarClientBuilder target(String target) {
        this.target = target;
        return this;
    }

    /** Connect with TLS, trusting the CA certificates in this PEM file to have issued the server's. */
    public OptSidecarClientBuilder tlsCa(Path caFile) {
        this.tlsCa = caFile;
        return this;
    }

    /** Present this certificate chain and key (PEM) to a server that requires client certificates. */
    public OptSidecarClientBuilder clientCertificate(Path certFile, Path keyFile) {
        this.clientCert = certFile;
        this.clientKey = keyFile;
        return this;
    }

    /** Send {@code authorization: Bearer <token>} with every call. */
    public OptSidecarClientBuilder token(String token) {
        this.token = token;
        return this;
    }

    /**
     * Opens the channel (connecting lazily, on the first call).
     *
     * @throws IllegalArgumentException for settings that do not go together (a client certificate
     *                                  without a CA or without its key, TLS to a Unix socket)
     * @throws UncheckedIOException     when a TLS file cannot be read or parsed
     */
    public OptSidecarClient connect() {
        if ((clientCert == null) != (clientKey == null)) {
            throw new IllegalArgumentException("a client certificate needs its key and a key its certificate");
        }
        if (clientCert != null && tlsCa == null) {
            throw new IllegalArgumentException("a client certificate needs a TLS CA (TLS is on when a CA is given)");
        }
        boolean unix = target.startsWith("unix:");
        if (unix && tlsCa != null) {
            throw new IllegalArgumentException(target + ": Unix sockets are served in plaintext; give no TLS CA");
        }
        ManagedChannelBuilder<?> b;
        if (unix) {
            // grpc-netty's provider for unix: targets (epoll's domain sockets, Linux).
            b = io.grpc.Grpc.newChannelBuilder(target, InsecureChannelCredentials.create());
        } else {
            b = NettyChannelBuilder.forTarget(target, credentials())
                    .flowControlWindow(OptSidecarClient.FLOW_CONTROL_WINDOW);
        }
        b.maxInboundMessageSize(OptSidecarClient.MAX_MESSAGE_BYTES);
        if (token != null) {
            Metadata headers = new Metadata();
            headers.put(AUTHORIZATION, "Bearer " + token);
            ClientInterceptor bearer = MetadataUtils.newAttachHeadersInterceptor(headers);
            b.intercept(bearer);
        }
        ManagedChannel channel = b.build();
        return new OptSidecarClient(channel, true);
    }

    private ChannelCredentials credentials() {
        if (tlsCa == null) {
            return InsecureChannelCredentials.create();
        }
        try {
            TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder().trustManager(tlsCa.toFile());
            if (clientCert != null) {
                tls.keyManager(clientCert.toFile(), clientKey.toFile());
            }
            return tls.build();
        } catch (IOException | IllegalArgumentException e) {
            throw new UncheckedIOException(new IOException("TLS files (CA " + tlsCa
                    + (clientCert == null ? "" : ", certificate " + clientCert + ", key " + clientKey) + "): "
                    + e.getMessage(), e));
        }
    }
}
