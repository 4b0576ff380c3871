package dev.optsidecar.server;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.Lookahead;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.Schedule;

import java.util.function.UnaryOperator;
import java.util.stream.Stream;

/** Every algorithm, with the wrappers, schedules and group layouts that give it extra state, on a small model. */
public final class TrainingConfigs {
    public static final long[] SIZES = {300_000, 33, 1};

    private TrainingConfigs() {}

    public record Config(String name, String algorithm, Struct hp, UnaryOperator<OptimizerConfig.Builder> extra) {
        @Override
        public String toString() {
            return name;
        }
    }

    public static Stream<Config> all() {
        return Stream.of(
                new Config("sgd-nesterov", "SGD", TestData.hp("lr", 0.05, "momentum", 0.9, "nesterov", true), c -> c),
                new Config("adamw-amsgrad-wsd", "AdamW", TestData.hp("lr", 0.01, "amsgrad", true), c -> c.setSchedule(
                        Schedule.newBuilder().setType("wsd").setParameters(TestData.hp("warmup_steps", 2,
                                "stable_steps", 4, "decay_steps", 6)))),
                new Config("radam-two-ema", "RAdam", TestData.hp("lr", 0.01), c -> c
                        .addEma(EmaShadow.newBuilder().setDecay(0.9))
                        .addEma(EmaShadow.newBuilder().setDecay(0.99).setEvery(4))),
                new Config("sgd-lookahead-pullback", "SGD", TestData.hp("lr", 0.05, "momentum", 0.9), c -> c
                        .setLookahead(Lookahead.newBuilder().setK(4).setAlpha(0.5).setPullbackMomentum("pullback"))),
                new Config("adamw-sf-momentum", "AdamWScheduleFree",
                        TestData.hp("lr", 0.02, "warmup_steps", 3, "inner_momentum", 0.9, "weight_decay", 0.01), c -> c),
                new Config("radam-sf-ema", "RAdamScheduleFree", TestData.hp("lr", 0.02),
                        c -> c.addEma(EmaShadow.newBuilder().setDecay(0.95))),
                new Config("sgd-sf", "SGDScheduleFree", TestData.hp("lr", 0.5, "warmup_steps", 2), c -> c),
                new Config("adam-amsgrad-in-one-group", "Adam", TestData.hp("lr", 0.01), c -> c),
                new Config("radam-torch2x-decoupled", "RAdam(torch2.x)",
                        TestData.hp("lr", 0.01, "weight_decay", 0.1, "decoupled_weight_decay", true), c -> c),
                new Config("radam-original-clipped", "RAdam(original)", TestData.hp("lr", 0.01),
                        c -> c.setClipGradNorm(50)));
    }

    public static ModelSpec spec(Config c, String name) {
        ModelSpec.Builder b = TestData.spec(name, c.algorithm(), c.hp(), SIZES);
        // The small tensors' group differs in lr; in one config also in its state slots (amsgrad).
        b.addGroups(ParamGroup.newBuilder().setName("small").addTensors("t1").addTensors("t2")
                .setHyperparameters(c.name().contains("amsgrad-in-one-group")
                        ? TestData.hp("lr", 0.001, "amsgrad", true) : TestData.hp("lr", 0.001)));
        b.setOptimizer(c.extra().apply(b.getOptimizer().toBuilder()));
        return b.build();
    }

}
