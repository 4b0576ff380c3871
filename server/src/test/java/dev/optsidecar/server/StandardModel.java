package dev.optsidecar.server;

import com.google.protobuf.ByteString;
import com.google.protobuf.Struct;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.TensorSpec;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The model the error tests share, its specs and data. It has three tensors: {@code w} [600, 500]
 * (300 000 floats, so two 1 MiB chunks: [0, 262144) and [262144, 300000)), {@code b} [500] and the
 * scalar {@code scale} []. {@code b} and {@code scale} form the group {@code no_decay}; {@code w}
 * is in {@code default}.
 */
public final class StandardModel {
    /** Floats per 1 MiB chunk, the protocol's chunk size. */
    public static final int CHUNK_FLOATS = (1 << 20) / Float.BYTES;
    public static final long[][] SHAPES = {{600, 500}, {500}, {}};
    public static final String[] NAMES = {"w", "b", "scale"};
    public static final int[] SIZES = {300_000, 500, 1};

    private StandardModel() {}

    /** The standard three-tensor model. */
    public static ModelSpec spec(String name, String algorithm, Struct hyperparameters, NonFinitePolicy policy) {
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
    public static ModelSpec adamSpec(String name) {
        return spec(name, "Adam", struct("lr", 0.01, "betas", List.of(0.8, 0.95), "weight_decay", 0.01),
                NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED);
    }

    public static TensorSpec tensor(String name, long... shape) {
        TensorSpec.Builder t = TensorSpec.newBuilder().setName(name);
        for (long d : shape) {
            t.addShape(d);
        }
        return t.build();
    }

    /** Deterministic values in [-1, 1) for one tensor. */
    public static float[] values(long seed, int n) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (float) (r.nextDouble() * 2 - 1);
        }
        return v;
    }

    public static float[][] initialWeights(long seed) {
        float[][] w = new float[SIZES.length][];
        for (int i = 0; i < SIZES.length; i++) {
            w[i] = values(seed * 31 + i, SIZES[i]);
        }
        return w;
    }

    /** The gradients of valid step {@code k}; the same for a model and its twin. */
    public static float[][] grads(int k) {
        return initialWeights(1_000 + k);
    }

    public static float[][] zeros() {
        float[][] z = new float[SIZES.length][];
        for (int i = 0; i < SIZES.length; i++) {
            z[i] = new float[SIZES[i]];
        }
        return z;
    }

    public static List<TensorData> tensors(float[][] arrays) {
        List<TensorData> out = new ArrayList<>();
        for (float[] a : arrays) {
            out.add(TensorData.of(a));
        }
        return out;
    }

    /** {@code count} values of {@code v} from {@code from} as little-endian bytes. */
    public static ByteString le(float[] v, int from, int count) {
        ByteBuffer b = ByteBuffer.allocate(count * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = from; i < from + count; i++) {
            b.putFloat(v[i]);
        }
        return ByteString.copyFrom(b.array());
    }

    /** Bit-for-bit equality of every value (NaN payloads and signed zeros included). */
    public static void assertBitsEqual(float[][] expected, float[][] actual, String what) {
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
}
