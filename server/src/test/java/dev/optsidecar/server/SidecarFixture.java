package dev.optsidecar.server;

import com.google.protobuf.ByteString;
import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.server.model.Model;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import org.junit.jupiter.api.function.Executable;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * A real server on a loopback port, the Java client connected to it, raw generated stubs on a
 * separate channel for messages the client will not produce, and the shared model shape and
 * data the error tests use.
 *
 * <p>The standard test model has three tensors: {@code w} [600, 500] (300 000 floats, so two
 * 1 MiB chunks: [0, 262144) and [262144, 300000)), {@code b} [500] and the scalar {@code scale}
 * []. {@code b} and {@code scale} form the group {@code no_decay}; {@code w} is in {@code default}.
 */
final class SidecarFixture implements AutoCloseable {
    static final long DEFAULT_MEMORY_LIMIT = 1L << 30;
    /** Floats per 1 MiB chunk, the protocol's chunk size. */
    static final int CHUNK_FLOATS = (1 << 20) / Float.BYTES;
    static final long[][] SHAPES = {{600, 500}, {500}, {}};
    static final String[] NAMES = {"w", "b", "scale"};
    static final int[] SIZES = {300_000, 500, 1};
    /** How long a test waits for the server to notice something asynchronous (a cancellation). */
    static final long WAIT_MS = 10_000;

    final SidecarServer server;
    final OptSidecarClient client;
    final ManagedChannel rawChannel;
    final OptimizerGrpc.OptimizerStub async;
    final OptimizerGrpc.OptimizerBlockingStub blocking;
    private final SevereLogs severe = new SevereLogs();

    private SidecarFixture(long memoryLimit) throws Exception {
        server = SidecarServer.start("127.0.0.1", 0, 2, memoryLimit);
        client = OptSidecarClient.connect("127.0.0.1:" + server.port());
        rawChannel = channel();
        async = OptimizerGrpc.newStub(rawChannel);
        blocking = OptimizerGrpc.newBlockingStub(rawChannel).withMaxInboundMessageSize(4 << 20);
    }

    static SidecarFixture start() throws Exception {
        return start(DEFAULT_MEMORY_LIMIT);
    }

    static SidecarFixture start(long memoryLimit) throws Exception {
        return new SidecarFixture(memoryLimit);
    }

    /** A new, independent connection to the server; the caller shuts it down. */
    ManagedChannel channel() {
        return channelTo(server.port());
    }

    static ManagedChannel channelTo(int port) {
        return NettyChannelBuilder.forAddress("127.0.0.1", port)
                .usePlaintext()
                .maxInboundMessageSize(4 << 20)
                .build();
    }

    Model model(String name) {
        return server.registry().get(name, "test");
    }

    @Override
    public void close() {
        client.close();
        rawChannel.shutdownNow();
        try {
            rawChannel.awaitTermination(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        server.close();
        severe.close();
    }

    // ------------------------------------------------------------------------------------------
    // The server stays healthy

    /**
     * The server still serves: a fresh model registers, steps and pulls, and nothing was logged
     * as SEVERE (an unexpected exception inside the server) while the tests ran.
     */
    void assertServerHealthy(String name) {
        float[][] init = initialWeights(99);
        client.register(spec(name, "Adam", struct("lr", 0.01), NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED),
                tensors(init));
        float[][] out = zeros();
        try (Trainer t = client.trainer(name, "health")) {
            StepResult r = t.step(grads(1), out);
            assertEquals(1, r.getVersion());
            assertFalse(r.getSkipped());
        }
        float[][] pulled = pull(name);
        assertBitsEqual(out, pulled, "weights returned by the step vs. pulled");
        assertEquals(1, client.describe(name).getVersion());
        client.delete(name);
        severe.assertNone();
    }

    // ------------------------------------------------------------------------------------------
    // Status assertions

    /**
     * Runs {@code call}, which must fail with {@code code}, and checks that the description
     * contains every fragment (the field, tensor or model at fault).
     */
    static Status assertStatus(Status.Code code, Executable call, String... fragments) {
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class, call);
        assertStatus(code, e.getStatus(), fragments);
        return e.getStatus();
    }

    static void assertStatus(Status.Code code, Status status, String... fragments) {
        assertEquals(code, status.getCode(), () -> "status " + status);
        String description = status.getDescription();
        assertNotNull(description, () -> "status " + status + " has no description");
        for (String f : fragments) {
            assertTrue(description.contains(f),
                    () -> "description does not name '" + f + "': " + status.getCode() + ": " + description);
        }
    }

    void assertNotFound(String model) {
        assertStatus(Status.Code.NOT_FOUND, () -> client.describe(model), model);
        assertFalse(client.list().contains(model), () -> model + " is listed");
    }

    // ------------------------------------------------------------------------------------------
    // Reading a model

    float[][] pull(String model) {
        float[][] out = zeros();
        client.pull(model, tensors(out));
        return out;
    }

    ModelInfo describe(String model) {
        return blocking.describe(DescribeRequest.newBuilder().setModel(model).build());
    }

    /** One valid step with {@code grads} on a fresh stream; returns the weights it sent back. */
    StepResult step(String model, float[][] grads, float[][] weightsOut) {
        try (Trainer t = client.trainer(model, "test")) {
            return t.step(grads, weightsOut);
        }
    }

    /** Polls {@code condition} until it holds, for at most {@link #WAIT_MS}. */
    static void awaitTrue(String what, BooleanSupplier condition) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(WAIT_MS);
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                fail("timed out after " + WAIT_MS + " ms waiting for " + what);
            }
            try {
                Thread.sleep(2);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new AssertionError("interrupted waiting for " + what, e);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Specs and data

    /** The standard three-tensor model. */
    static ModelSpec spec(String name, String algorithm, Struct hyperparameters, NonFinitePolicy policy) {
        ModelSpec.Builder b = ModelSpec.newBuilder().setName(name);
        for (int i = 0; i < NAMES.length; i++) {
            b.addTensors(tensor(NAMES[i], SHAPES[i]));
        }
        return b.addGroups(ParamGroup.newBuilder().setName("no_decay").addTensors("b").addTensors("scale")
                        .setHyperparameters(struct("weight_decay", 0.0)))
                .setOptimizer(OptimizerConfig.newBuilder()
                        .setAlgorithm(algorithm)
                        .setHyperparameters(hyperparameters)
                        .setNonFinite(policy))
                .build();
    }

    /** Adam with non-trivial betas, coupled weight decay on {@code w}, default non-finite policy. */
    static ModelSpec adamSpec(String name) {
        return spec(name, "Adam", struct("lr", 0.01, "betas", List.of(0.8, 0.95), "weight_decay", 0.01),
                NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED);
    }

    static TensorSpec tensor(String name, long... shape) {
        TensorSpec.Builder t = TensorSpec.newBuilder().setName(name);
        for (long d : shape) {
            t.addShape(d);
        }
        return t.build();
    }

    /** A Struct from alternating names and values (numbers, booleans, strings, lists). */
    static Struct struct(Object... nameValuePairs) {
        Struct.Builder b = Struct.newBuilder();
        for (int i = 0; i < nameValuePairs.length; i += 2) {
            b.putFields((String) nameValuePairs[i], value(nameValuePairs[i + 1]));
        }
        return b.build();
    }

    static Value value(Object o) {
        if (o instanceof Number n) {
            return Value.newBuilder().setNumberValue(n.doubleValue()).build();
        }
        if (o instanceof Boolean bool) {
            return Value.newBuilder().setBoolValue(bool).build();
        }
        if (o instanceof String s) {
            return Value.newBuilder().setStringValue(s).build();
        }
        if (o instanceof List<?> list) {
            ListValue.Builder l = ListValue.newBuilder();
            list.forEach(x -> l.addValues(value(x)));
            return Value.newBuilder().setListValue(l).build();
        }
        throw new IllegalArgumentException("no Value for " + o);
    }

    /** Deterministic values in [-1, 1) for one tensor. */
    static float[] values(long seed, int n) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (float) (r.nextDouble() * 2 - 1);
        }
        return v;
    }

    static float[][] initialWeights(long seed) {
        float[][] w = new float[SIZES.length][];
        for (int i = 0; i < SIZES.length; i++) {
            w[i] = values(seed * 31 + i, SIZES[i]);
        }
        return w;
    }

    /** The gradients of valid step {@code k}; the same for a model and its twin. */
    static float[][] grads(int k) {
        return initialWeights(1_000 + k);
    }

    static float[][] zeros() {
        float[][] z = new float[SIZES.length][];
        for (int i = 0; i < SIZES.length; i++) {
            z[i] = new float[SIZES[i]];
        }
        return z;
    }

    static List<TensorData> tensors(float[][] arrays) {
        List<TensorData> out = new ArrayList<>();
        for (float[] a : arrays) {
            out.add(TensorData.of(a));
        }
        return out;
    }

    /** {@code count} values of {@code v} from {@code from} as little-endian bytes. */
    static ByteString le(float[] v, int from, int count) {
        ByteBuffer b = ByteBuffer.allocate(count * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = from; i < from + count; i++) {
            b.putFloat(v[i]);
        }
        return ByteString.copyFrom(b.array());
    }

    /** Bit-for-bit equality of every value (NaN payloads and signed zeros included). */
    static void assertBitsEqual(float[][] expected, float[][] actual, String what) {
        assertEquals(expected.length, actual.length, what + ": tensor count");
        for (int t = 0; t < expected.length; t++) {
            assertEquals(expected[t].length, actual[t].length, what + ": length of tensor #" + t);
            for (int i = 0; i < expected[t].length; i++) {
                int e = Float.floatToRawIntBits(expected[t][i]);
                int a = Float.floatToRawIntBits(actual[t][i]);
                if (e != a) {
                    fail(what + ": tensor " + NAMES[t] + " element " + i + " differs: expected "
                            + expected[t][i] + " but was " + actual[t][i]);
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------

    /** Records SEVERE log records from the server and gRPC: an unexpected exception somewhere. */
    private static final class SevereLogs extends Handler {
        private final List<Logger> loggers = List.of(Logger.getLogger("dev.optsidecar"), Logger.getLogger("io.grpc"));
        private final List<String> records = new ArrayList<>();

        SevereLogs() {
            loggers.forEach(l -> l.addHandler(this));
        }

        @Override
        public synchronized void publish(LogRecord r) {
            if (r.getLevel().intValue() >= Level.SEVERE.intValue()) {
                records.add(r.getLoggerName() + ": " + r.getMessage()
                        + (r.getThrown() == null ? "" : " (" + r.getThrown() + ")"));
            }
        }

        synchronized void assertNone() {
            assertTrue(records.isEmpty(), () -> "the server logged unexpected errors: " + records);
        }

        @Override
        public void flush() {}

        @Override
        public void close() {
            loggers.forEach(l -> l.removeHandler(this));
        }
    }
}
