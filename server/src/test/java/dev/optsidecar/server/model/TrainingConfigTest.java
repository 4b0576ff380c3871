package dev.optsidecar.server.model;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.Lookahead;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.function.UnaryOperator;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Bad schedule, EMA, Lookahead and clipping settings: INVALID_ARGUMENT naming the field, no model. */
class TrainingConfigTest {
    @RegisterExtension
    static final SidecarFixture LIVE = SidecarFixture.inProcess(1, 1L << 26);


    record Bad(String what, String algorithm, UnaryOperator<OptimizerConfig.Builder> edit, String field) {
        @Override
        public String toString() {
            return what;
        }
    }

    static Stream<Bad> cases() {
        return Stream.of(
                new Bad("unknown schedule", "SGD", c -> c.setSchedule(Schedule.newBuilder().setType("exp")),
                        "spec.optimizer.schedule.type"),
                new Bad("schedule missing a parameter", "SGD", c -> c.setSchedule(Schedule.newBuilder().setType("cosine")
                        .setParameters(TestData.hp("warmup_steps", 2))), "spec.optimizer.schedule.parameters.total_steps"),
                new Bad("EMA decay of 1", "Adam", c -> c.addEma(EmaShadow.newBuilder().setDecay(1.0)),
                        "spec.optimizer.ema[0].decay"),
                new Bad("two shadows with one decay", "Adam", c -> c.addEma(EmaShadow.newBuilder().setDecay(0.9))
                        .addEma(EmaShadow.newBuilder().setDecay(0.9)), "spec.optimizer.ema[1].decay"),
                new Bad("Lookahead k of 0", "SGD", c -> c.setLookahead(Lookahead.newBuilder().setAlpha(0.5)),
                        "spec.optimizer.lookahead.k"),
                new Bad("Lookahead alpha above 1", "SGD", c -> c.setLookahead(Lookahead.newBuilder().setK(5).setAlpha(1.5)),
                        "spec.optimizer.lookahead.alpha"),
                new Bad("unknown pullback", "SGD", c -> c.setLookahead(Lookahead.newBuilder().setK(5).setAlpha(0.5)
                        .setPullbackMomentum("sideways")), "spec.optimizer.lookahead.pullback_momentum"),
                new Bad("pullback without momentum", "Adam", c -> c.setLookahead(Lookahead.newBuilder().setK(5)
                        .setAlpha(0.5).setPullbackMomentum("reset")), "spec.optimizer.lookahead.pullback_momentum"),
                new Bad("negative clip norm", "SGD", c -> c.setClipGradNorm(-1), "spec.optimizer.clip_grad_norm"),
                new Bad("Lookahead as an algorithm", "Lookahead", c -> c, "spec.optimizer.algorithm"),
                new Bad("Schedule-Free momentum of 1", "SGDScheduleFree", c -> c.setHyperparameters(
                        TestData.hp("momentum", 1.0)), "spec.optimizer.hyperparameters.momentum"),
                new Bad("fractional warmup_steps", "AdamWScheduleFree", c -> c.setHyperparameters(
                        TestData.hp("warmup_steps", 2.5)), "spec.optimizer.hyperparameters.warmup_steps"));
    }

    @ParameterizedTest
    @MethodSource("cases")
    void isRejectedNamingTheField(Bad bad) {
        ModelSpec.Builder spec = TestData.spec("bad-" + bad.what().replace(' ', '-'), bad.algorithm(),
                TestData.hp(), 4);
        spec.setOptimizer(bad.edit().apply(spec.getOptimizer().toBuilder()));
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
                () -> LIVE.client().register(spec.build(), TestData.data(new float[4])));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode(), e.getStatus().toString());
        assertTrue(e.getStatus().getDescription().startsWith(bad.field()), e.getStatus().getDescription());
        assertEquals(0, LIVE.server().registry().reservedBytes());
    }
}
