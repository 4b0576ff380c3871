package dev.optsidecar.server.auth;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.server.ListenAddress;
import dev.optsidecar.server.ServerTls;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import dev.optsidecar.server.model.Limits;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;

import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A server on a socket with {@code --auth-tokens} and a state directory, as Main runs it, and
 * clients that send a token; closing it closes them all.
 */
final class TokenServer implements AutoCloseable {
    static final Duration RELOAD = Duration.ofMillis(100);

    final SocketServer server;
    final Path tokenFile;
    private final String host;
    private final List<AutoCloseable> opened = new ArrayList<>();

    private TokenServer(SocketServer server, Path tokenFile, String host) {
        this.server = server;
        this.tokenFile = tokenFile;
        this.host = host;
    }

    /** On 127.0.0.1, in plaintext, with the tokens of {@code tokens}, state in {@code dir}. */
    static TokenServer start(Path dir, TokenFiles tokens) throws IOException {
        return start(dir, tokens, "127.0.0.1", "127.0.0.1", null);
    }

    /** On {@code bind}, reached at {@code host}, TLS when {@code tls} is not null. */
    static TokenServer start(Path dir, TokenFiles tokens, String bind, String host, ServerTls tls) throws IOException {
        Path file = tokens.writeTo(dir.resolve("tokens.json"));
        TokenAuthority authority = TokenAuthority.load(file, RELOAD);
        Persistence.Options durable = new Persistence.Options(dir.resolve("state"), 3, StepJournal.Sync.WRITE, 0,
                null, true);
        SocketServer s = SocketServer.start(List.of(new ListenAddress.Tcp(bind, 0)),
                new SocketServer.Exposure(tls, null, true, authority), 2, 1L << 30, durable, List.of(), Limits.DEFAULTS);
        return new TokenServer(s, file, host);
    }

    String target() {
        return host + ":" + server.port();
    }

    /** The Java client sending {@code token} (none when null). */
    OptSidecarClient client(String token) {
        return track(token == null ? OptSidecarClient.connect(target())
                : OptSidecarClient.builder(target()).token(token).connect());
    }

    /** Raw stubs sending {@code token} (none when null), for the calls the client has no method for. */
    OptimizerGrpc.OptimizerBlockingStub blocking(String token) {
        ManagedChannel channel = NettyChannelBuilder.forTarget(target()).usePlaintext().build();
        opened.add(() -> {
            channel.shutdownNow();
            channel.awaitTermination(5, TimeUnit.SECONDS);
        });
        OptimizerGrpc.OptimizerBlockingStub stub = OptimizerGrpc.newBlockingStub(channel)
                .withDeadlineAfter(30, TimeUnit.SECONDS);
        if (token == null) {
            return stub;
        }
        Metadata headers = new Metadata();
        headers.put(TokenCheck.AUTHORIZATION, "Bearer " + token);
        return stub.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    }

    private <T extends AutoCloseable> T track(T closeable) {
        opened.add(closeable);
        return closeable;
    }

    /** A model of two small tensors in two groups, AdamW. */
    static ModelSpec spec(String name) {
        return ModelSpec.newBuilder().setName(name)
                .addTensors(dev.optsidecar.server.StandardModel.tensor("w", 3, 2))
                .addTensors(dev.optsidecar.server.StandardModel.tensor("b", 2))
                .addGroups(ParamGroup.newBuilder().setName("no_decay").addTensors("b")
                        .setHyperparameters(TestData.struct("weight_decay", 0.0)))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("AdamW")
                        .setHyperparameters(TestData.struct("lr", 0.01)))
                .build();
    }

    static float[][] weights(float scale) {
        return new float[][] {{1 * scale, 2 * scale, 3 * scale, 4 * scale, 5 * scale, 6 * scale}, {scale, -scale}};
    }

    static List<TensorData> data(float[][] arrays) {
        return dev.optsidecar.server.StandardModel.tensors(arrays);
    }

    @Override
    public void close() throws Exception {
        for (int i = opened.size() - 1; i >= 0; i--) {
            opened.get(i).close();
        }
        server.close();
    }
}
