package dev.optsidecar.server.engine.kernel;

import com.google.protobuf.Struct;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.GroupScalars;
import dev.optsidecar.server.optim.Hyperparameters;
import dev.optsidecar.server.optim.Lookahead;
import dev.optsidecar.server.optim.StepPlan;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

/**
 * The configurations the kernel tests run: every registered algorithm with the settings that take
 * each branch of its kernels (maximize, both weight decays, amsgrad, nesterov, dampening, SGD and
 * rectified phases, the silent SGD phase, inner momentum, clipping), and the wrappers as the
 * server composes them (an EMA folded into a Schedule-Free AdamW loop and chained after other
 * kernels, Lookahead on SGD with momentum in each pullback mode). Each case yields, step by step,
 * the programs of kernel calls the server would run, built by the real algorithm classes.
 */
public final class KernelMatrix {
    /** Steps per case: past RAdam's threshold (ρt > 5 from t = 6) and Schedule-Free RAdam's. */
    static final int STEPS = 9;

    private KernelMatrix() {}

    /**
     * @param gradScale the clipping factor every step applies (1: none)
     * @param ema       EMA shadows as (decay, every) pairs
     * @param lookahead null, or Lookahead with k = 3
     */
    public record Case(String name, String algorithm, Struct hp, float gradScale, double[][] ema,
                       Lookahead.Pullback lookahead, boolean setsWeights) {
        @Override
        public String toString() {
            return name;
        }

        Algorithm create() {
            AlgorithmDefinition def = Algorithms.byName(algorithm, "matrix");
            return def.create(Hyperparameters.merge(def, Map.of("hp", hp)));
        }

        /** Slots per tensor: the algorithm's, then EMA shadows, then Lookahead's slow weights and cache. */
        int slotCount() {
            return create().stateSlots().size() + ema.length + (lookahead == null ? 0 : 2);
        }

        /** The programs of steps 1..STEPS (index 0 is Lookahead's initialisation, or empty). */
        List<List<KernelCall>> programs() {
            Algorithm alg = create();
            int algSlots = alg.stateSlots().size();
            int slow = algSlots + ema.length;
            Lookahead la = lookahead == null ? null : new Lookahead(3, 0.6, lookahead);
            List<List<KernelCall>> steps = new ArrayList<>();
            steps.add(la == null ? List.of() : List.of(la.initialise(slow)));
            GroupScalars scalars = GroupScalars.initial(alg.groupScalars());
            long[] emaUpdates = new long[ema.length];
            for (int t = 1; t <= STEPS; t++) {
                StepPlan plan = alg.plan(scalars, 0.01 * (1 + t % 3), gradScale);
                scalars = plan.after();
                List<KernelCall> calls = new ArrayList<>();
                calls.add(plan.forTensor().apply(t));
                if (la != null && la.syncsAt(1 + (t - 1) % 3)) {
                    calls.add(la.sync(slow, alg.momentumSlot(), slow + 1));
                }
                for (int i = 0; i < ema.length; i++) {
                    EmaShadow shadow = new EmaShadow(ema[i][0], (long) ema[i][1]);
                    if (shadow.updatesAt(t)) {
                        calls.add(shadow.update(emaUpdates[i]++, algSlots + i));
                    }
                }
                steps.add(calls);
                if (setsWeights && t % 3 == 1) {
                    // A trainer sets the weights between steps: θ = the sent values, at the train
                    // point or, where the algorithm has one, at the eval point (y recomputed from z).
                    List<KernelCall> set = new ArrayList<>(List.of(Kernel.SET_PARAMS.call().build()));
                    if (alg.trainFromEval() != null && t % 2 == 0) {
                        set.add(alg.trainFromEval());
                    }
                    steps.add(set);
                }
            }
            return steps;
        }
    }

    private static Case of(String name, String algorithm, Struct hp) {
        return new Case(name, algorithm, hp, 1f, new double[0][], null, false);
    }

    private static Case settingWeights(String name, String algorithm, Struct hp, double[]... ema) {
        return new Case(name, algorithm, hp, 1f, ema, null, true);
    }

    private static Case clipped(String name, String algorithm, Struct hp) {
        return new Case(name, algorithm, hp, 0.375f, new double[0][], null, false);
    }

    private static Case withEma(String name, String algorithm, Struct hp, float gradScale, double[]... ema) {
        return new Case(name, algorithm, hp, gradScale, ema, null, false);
    }

    private static Case withLookahead(String name, String algorithm, Struct hp, Lookahead.Pullback mode) {
        return new Case(name, algorithm, hp, 1f, new double[0][], mode, false);
    }

    public static Stream<Case> cases() {
        return Stream.of(
                of("sgd", "SGD", TestData.hp("lr", 0.1)),
                of("sgd-l2-maximize", "SGD", TestData.hp("lr", 0.1, "weight_decay", 0.05, "maximize", true)),
                clipped("sgd-momentum-dampening-clipped", "SGD", TestData.hp("momentum", 0.9, "dampening", 0.3)),
                of("sgd-nesterov-l2", "SGD", TestData.hp("momentum", 0.8, "nesterov", true, "weight_decay", 0.01)),
                of("adam", "Adam", TestData.hp()),
                of("adam-l2", "Adam", TestData.hp("weight_decay", 0.1)),
                of("adam-l2-amsgrad", "Adam", TestData.hp("weight_decay", 0.1, "amsgrad", true)),
                clipped("adam-maximize-clipped", "Adam", TestData.hp("maximize", true)),
                of("adamw", "AdamW", TestData.hp("weight_decay", 0.1)),
                of("adamw-amsgrad-maximize", "AdamW", TestData.hp("amsgrad", true, "maximize", true)),
                of("radam", "RAdam", TestData.hp()),
                of("radam-l2", "RAdam", TestData.hp("weight_decay", 0.1)),
                clipped("radam-decoupled-maximize-clipped", "RAdam",
                        TestData.hp("weight_decay", 0.1, "decoupled_weight_decay", true, "maximize", true)),
                of("radam-torch2x", "RAdam(torch2.x)", TestData.hp()),
                of("radam-torch2x-decoupled", "RAdam(torch2.x)",
                        TestData.hp("weight_decay", 0.1, "decoupled_weight_decay", true)),
                of("radam-original", "RAdam(original)", TestData.hp()),
                clipped("radam-original-degenerated-decay-clipped", "RAdam(original)",
                        TestData.hp("degenerated_to_sgd", true, "weight_decay", 0.1)),
                of("sgd-sf", "SGDScheduleFree", TestData.hp()),
                clipped("sgd-sf-decay-warmup-clipped", "SGDScheduleFree",
                        TestData.hp("weight_decay", 0.01, "warmup_steps", 3)),
                withEma("adamw-sf-ema-folded", "AdamWScheduleFree", TestData.hp(), 1f, new double[] {0.9, 1}),
                withEma("adamw-sf-decay-two-ema", "AdamWScheduleFree", TestData.hp("weight_decay", 0.01), 1f,
                        new double[] {0.9, 1}, new double[] {0.99, 2}),
                withEma("adamw-sf-clipped-ema-chained", "AdamWScheduleFree", TestData.hp("warmup_steps", 2),
                        0.375f, new double[] {0.9, 1}),
                of("adamw-sf-inner-momentum-decay", "AdamWScheduleFree",
                        TestData.hp("inner_momentum", 0.9, "weight_decay", 0.01)),
                clipped("adamw-sf-inner-momentum-clipped", "AdamWScheduleFree", TestData.hp("inner_momentum", 0.5)),
                withEma("radam-sf-ema-chained", "RAdamScheduleFree", TestData.hp(), 1f, new double[] {0.95, 1}),
                of("radam-sf-sgd-phase-decay", "RAdamScheduleFree",
                        TestData.hp("silent_sgd_phase", false, "weight_decay", 0.01)),
                clipped("radam-sf-clipped", "RAdamScheduleFree", TestData.hp()),
                withEma("radam-ema-every-2", "RAdam", TestData.hp(), 1f, new double[] {0.9, 2}),
                withLookahead("sgd-momentum-lookahead", "SGD", TestData.hp("momentum", 0.9), Lookahead.Pullback.NONE),
                withLookahead("sgd-momentum-lookahead-reset", "SGD", TestData.hp("momentum", 0.9),
                        Lookahead.Pullback.RESET),
                withLookahead("sgd-momentum-lookahead-pullback", "SGD", TestData.hp("momentum", 0.9),
                        Lookahead.Pullback.PULLBACK),
                withLookahead("adam-lookahead", "Adam", TestData.hp(), Lookahead.Pullback.NONE),
                settingWeights("adam-setting-weights", "Adam", TestData.hp(), new double[] {0.9, 1}),
                settingWeights("adamw-sf-setting-weights-at-train-and-eval", "AdamWScheduleFree", TestData.hp()));
    }
}
