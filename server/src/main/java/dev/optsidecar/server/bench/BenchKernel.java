package dev.optsidecar.server.bench;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.cpu.BlockLoop;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.GroupScalars;
import dev.optsidecar.server.optim.Hyperparameters;
import dev.optsidecar.server.optim.StepPlan;

import java.util.List;
import java.util.Map;
import java.util.function.LongFunction;

/**
 * One row of the engine table: a kernel, composed as the server composes it, and the memory-pass
 * ceiling over exactly the arrays it touches: an in-place pass with trivial arithmetic, run by the
 * same engine so the work is split the same way. Each ceiling store depends on the loaded values,
 * so the JIT can drop neither.
 *
 * @param name      label of the row
 * @param about     the configuration, for the header
 * @param arrays    the arrays read and written, for the header
 * @param slots     state slots per tensor
 * @param reads     arrays read per element
 * @param writes    arrays written per element
 * @param firstStep the tensor's step count t at the first benchmark step
 * @param program   the kernel calls for a tensor at its step t
 * @param measured  whether the step also measures the update norm
 * @param ceiling   the memory pass over the same arrays
 */
record BenchKernel(String name, String about, String arrays, int slots, int reads, int writes, long firstStep,
                   LongFunction<List<KernelCall>> program, boolean measured, BlockLoop ceiling) {
    /**
     * Group steps taken before a Schedule-Free kernel is planned: k ≥ 5 puts Schedule-Free RAdam
     * past its silent phase, and lr_max, weight_sum and c are those of a group already training.
     */
    private static final int SCHEDULE_FREE_K = 10;
    private static final double SCHEDULE_FREE_LR = 0.0025;

    /** The ceiling of an Adam-family step: reads p, g and two slots, writes p and both slots. */
    private static final BlockLoop ADAM_PASS = (p, g, s, from, to) -> {
        float[] m = s[0];
        float[] v = s[1];
        for (int i = from; i < to; i++) {
            float gi = g[i] * 1e-3f;
            p[i] += gi;
            m[i] += gi;
            v[i] += gi * gi;
        }
    };

    /** The ceiling of a Schedule-Free step with an EMA: reads y, g, z, v, e and writes all but g. */
    private static final BlockLoop SCHEDULE_FREE_EMA_PASS = (p, g, s, from, to) -> {
        float[] z = s[0];
        float[] v = s[1];
        float[] e = s[2];
        for (int i = from; i < to; i++) {
            float gi = g[i] * 1e-3f;
            p[i] += gi;
            z[i] += gi;
            v[i] += gi * gi;
            e[i] += gi;
        }
    };

    /** The rows of the table, in order. */
    static List<BenchKernel> all() {
        return List.of(radam(), radamScheduleFree(), adamWScheduleFreeWithEma(), radamWithUpdateNorm());
    }

    /**
     * RAdam with its defaults. Counting starts at step 6, the first with ρt > 5 for β2 = 0.999, so
     * every step takes the rectified path (sqrt and divide).
     */
    static BenchKernel radam() {
        Algorithm radam = create("RAdam", Map.of());
        return new BenchKernel("RAdam", "defaults, rectified (t >= 6)", "read p,g,m,v; write p,m,v", 2, 4, 3, 6,
                t -> List.of(radam.plan(GroupScalars.NONE, 1e-3, 1f).forTensor().apply(t)), false, ADAM_PASS);
    }

    /** Schedule-Free RAdam with its defaults, rectified (sqrt and divide) with z already set. */
    static BenchKernel radamScheduleFree() {
        StepPlan plan = planAtK(create("RAdamScheduleFree", Map.of()));
        return new BenchKernel("RAdamSF", "defaults, k = " + SCHEDULE_FREE_K + " (rectified)",
                "read y,g,z,v; write y,z,v", 2, 4, 3, SCHEDULE_FREE_K + 1, t -> List.of(plan.forTensor().apply(t)),
                false, ADAM_PASS);
    }

    /**
     * Schedule-Free AdamW with weight decay, then an EMA shadow past its first update (so it
     * blends), composed as the server composes them (the blend folded into the kernel's loop) for a
     * tensor with slots z, exp_avg_sq, ema.
     */
    static BenchKernel adamWScheduleFreeWithEma() {
        StepPlan plan = planAtK(create("AdamWScheduleFree", Map.of("weight_decay", 0.01)));
        EmaShadow shadow = new EmaShadow(0.999, 1);
        return new BenchKernel("AdamWSF+EMA", "weight_decay 0.01, k = " + SCHEDULE_FREE_K + ", then EMA 0.999",
                "read y,g,z,v,e; write y,z,v,e", 3, 5, 4, SCHEDULE_FREE_K + 1,
                t -> List.of(plan.forTensor().apply(t), shadow.update(1, 2)), false, SCHEDULE_FREE_EMA_PASS);
    }

    /** RAdam with the update norm measured (OptimizerConfig.report_update_norm): what asking costs. */
    static BenchKernel radamWithUpdateNorm() {
        Algorithm radam = create("RAdam", Map.of());
        return new BenchKernel("RAdam+norm", "as RAdam, with report_update_norm", "read p,g,m,v; write p,m,v", 2, 4, 3, 6,
                t -> List.of(radam.plan(GroupScalars.NONE, 1e-3, 1f).forTensor().apply(t)), true, ADAM_PASS);
    }

    /** Bytes a step moves per element, for the GB/s columns. */
    int bytesPerElement() {
        return (reads + writes) * Float.BYTES;
    }

    /** Heap one tensor takes per element: parameters, gradient and the state slots. */
    int heapPerElement() {
        return (2 + slots) * Float.BYTES;
    }

    BenchTensor kernelTensor(CpuEngine engine, long numel) {
        return new BenchTensor(engine, numel, slots, firstStep, (e, tensor, t) -> {
            List<TensorProgram> programs = List.of(new TensorProgram(tensor, program.apply(t)));
            if (measured) {
                e.runMeasuringUpdate(programs);
            } else {
                e.run(programs);
            }
        }, 1);
    }

    BenchTensor ceilingTensor(CpuEngine engine, long numel) {
        return new BenchTensor(engine, numel, slots, 1, (e, tensor, t) -> e.runLoop(List.of(tensor), ceiling), 2);
    }

    /**
     * Runs the kernel and its ceiling on a small tensor until the JIT has fully compiled both. The
     * measured sizes alone call a kernel too few times for that, so the first of them would time
     * partly compiled code, with the compiler threads competing with the engine for the CPUs.
     */
    void warmUpJit(CpuEngine engine) {
        try (BenchTensor k = kernelTensor(engine, 1 << 16); BenchTensor c = ceilingTensor(engine, 1 << 16)) {
            for (int i = 0; i < 2000; i++) {
                k.timeStep();
                c.timeStep();
            }
        }
    }

    /** The algorithm with its defaults and the given overrides, validated as the server does. */
    private static Algorithm create(String name, Map<String, Double> overrides) {
        AlgorithmDefinition def = Algorithms.byName(name, "bench");
        Struct.Builder layer = Struct.newBuilder();
        overrides.forEach((k, v) -> layer.putFields(k, Value.newBuilder().setNumberValue(v).build()));
        return def.create(Hyperparameters.merge(def, Map.of("bench", layer.build())));
    }

    /** The plan of a group's next step once it has taken {@link #SCHEDULE_FREE_K} at the same lr. */
    private static StepPlan planAtK(Algorithm algorithm) {
        GroupScalars counters = GroupScalars.initial(algorithm.groupScalars());
        for (int i = 0; i < SCHEDULE_FREE_K; i++) {
            counters = algorithm.plan(counters, SCHEDULE_FREE_LR, 1f).after();
        }
        return algorithm.plan(counters, SCHEDULE_FREE_LR, 1f);
    }
}
