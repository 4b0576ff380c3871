package dev.optsidecar.server;

import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.Combine;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.CoordinationMode;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.SyncOptions;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.GroupScalars;
import dev.optsidecar.server.optim.StepPlan;
import dev.optsidecar.server.optim.Hyperparameters;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;

/** Builders for specs, hyperparameters and random tensors, and a direct engine run to compare with. */
public final class TestData {
    private TestData() {}

    /** Hyperparameters from alternating names and values. */
    public static Struct hp(Object... nameValue) {
        return struct(nameValue);
    }

    /** A Struct from alternating names and values (numbers, booleans, strings, lists). */
    public static Struct struct(Object... nameValue) {
        Struct.Builder s = Struct.newBuilder();
        for (int i = 0; i < nameValue.length; i += 2) {
            s.putFields((String) nameValue[i], value(nameValue[i + 1]));
        }
        return s.build();
    }

    private static Value value(Object o) {
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

    /** Sync coordination: a step of k contributions, their mean, after timeoutMs at least minK (0: no timeout). */
    public static Coordination sync(int k, int timeoutMs, int minK) {
        return Coordination.newBuilder().setMode(CoordinationMode.COORDINATION_SYNC)
                .setSync(SyncOptions.newBuilder().setK(k).setCombine(Combine.COMBINE_MEAN).setTimeoutMs(timeoutMs).setMinK(minK))
                .build();
    }

    public static ModelSpec.Builder spec(String name, String algorithm, Struct hp, long... sizes) {
        ModelSpec.Builder b = ModelSpec.newBuilder().setName(name)
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm(algorithm).setHyperparameters(hp));
        for (int i = 0; i < sizes.length; i++) {
            b.addTensors(TensorSpec.newBuilder().setName("t" + i).addShape(sizes[i]));
        }
        return b;
    }

    public static float[] random(int n, long seed) {
        Random r = new Random(seed);
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) r.nextGaussian();
        }
        return a;
    }

    public static List<TensorData> data(float[]... arrays) {
        List<TensorData> out = new ArrayList<>();
        for (float[] a : arrays) {
            out.add(a == null ? null : TensorData.of(a));
        }
        return out;
    }

    /** Runs the algorithm's kernels directly on a CPU engine, one step per gradient. */
    public static float[] applyLocally(String algorithm, Struct hp, float[] init, List<float[]> grads, double[] lrs) {
        AlgorithmDefinition def = Algorithms.byName(algorithm, "test");
        Algorithm alg = def.create(Hyperparameters.merge(def, Map.of("hp", hp)));
        try (CpuEngine engine = new CpuEngine(1)) {
            EngineTensor t = engine.allocate(init.length, alg.stateSlots().size());
            t.writeParams(0, le(init));
            GroupScalars counters = GroupScalars.initial(alg.groupScalars());
            for (int i = 0; i < grads.size(); i++) {
                t.writeGradient(0, le(grads.get(i)));
                StepPlan plan = alg.plan(counters, lrs[i], 1f);
                engine.run(List.of(new TensorProgram(t, List.of(plan.forTensor().apply(i + 1)))));
                counters = plan.after();
            }
            return params(t);
        }
    }

    public static ByteBuffer le(float[] values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.asFloatBuffer().put(values);
        return b;
    }

    /** A tensorwise algorithm's program for step t (torch-style algorithms keep no group counters). */
    public static TensorProgram step(dev.optsidecar.server.engine.EngineTensor tensor, Algorithm alg, long t, double lr) {
        return new TensorProgram(tensor, List.of(alg.plan(GroupScalars.initial(alg.groupScalars()), lr, 1f).forTensor().apply(t)));
    }

    /** Reads a tensor's parameters back as floats. */
    public static float[] params(EngineTensor t) {
        ByteBuffer out = ByteBuffer.allocate((int) t.numel() * 4);
        t.readParams(0, (int) t.numel(), out);
        float[] result = new float[(int) t.numel()];
        out.flip().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(result);
        return result;
    }
}
