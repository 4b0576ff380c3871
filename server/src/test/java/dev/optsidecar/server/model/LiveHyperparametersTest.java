package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.GroupStep;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.CapturedCopy;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.Twins;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;

import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Hyperparameters edited between steps (torch's param_groups[i][name] = value) apply from that
 * step on: the model then steps exactly as one registered with the new values and the state it
 * had. The new values show in the step's result and in Describe, travel with a fork, and a change
 * that would change the state a group keeps, or is not valid for the algorithm, is refused whole.
 */
class LiveHyperparametersTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();

    private static Map<String, Struct> hyperparametersByGroup(List<GroupStep> groups) {
        return groups.stream().collect(Collectors.toMap(GroupStep::getGroup, GroupStep::getHyperparameters));
    }

    @Test
    void editedHyperparametersApplyFromTheirStepAsIfTheModelHadBeenRegisteredWithThem() {
        ModelSpec spec = StandardModel.adamSpec("edited-hp");
        f.client().register(spec, StandardModel.tensors(StandardModel.initialWeights(11)));
        try (Trainer t = f.client().trainer("edited-hp", "t")) {
            t.step(grads(1), StandardModel.zeros());
            t.step(grads(2), StandardModel.zeros());

            // The model as it would be registered with the new values from here on: betas and eps
            // for every group, weight decay for "default", the lr of "no_decay" by group_hyperparameters.
            ModelSpec edited = spec.toBuilder().setName("edited-hp-copy")
                    .setOptimizer(spec.getOptimizer().toBuilder().setHyperparameters(struct("lr", 0.01,
                            "betas", List.of(0.7, 0.9), "weight_decay", 0.02, "eps", 1e-6)))
                    .setGroups(0, ParamGroup.newBuilder().setName("no_decay").addTensors("b").addTensors("scale")
                            .setHyperparameters(struct("weight_decay", 0.0, "lr", 0.005)))
                    .build();
            CapturedCopy.register(f.client(), "edited-hp", edited, Arrays.asList(f.pull("edited-hp")),
                    ViewKind.VIEW_TRAIN);

            float[][] a = StandardModel.zeros();
            StepResult changed = t.step(StandardModel.tensors(grads(3)), StandardModel.tensors(a),
                    new Trainer.StepOptions()
                            .hyperparameter("default", "betas", new double[] {0.7, 0.9})
                            .hyperparameter("default", "eps", 1e-6)
                            .hyperparameter("default", "weight_decay", 0.02)
                            .hyperparameter("no_decay", "betas", new double[] {0.7, 0.9})
                            .hyperparameter("no_decay", "eps", 1e-6)
                            .hyperparameter("no_decay", "lr", 0.005));
            float[][] b = StandardModel.zeros();
            StepResult copied = f.step("edited-hp-copy", grads(3), b);
            assertBitsEqual(b, a, "the step with the change, model vs copy registered with it");
            assertEquals(hyperparametersByGroup(copied.getGroupsList()), hyperparametersByGroup(changed.getGroupsList()),
                    "the step reports the hyperparameters it used");
            assertEquals(0.005, changed.getGroupsList().stream().filter(s -> s.getGroup().equals("no_decay"))
                    .findFirst().orElseThrow().getLr());

            t.step(grads(4), a);
            f.step("edited-hp-copy", grads(4), b);
            assertBitsEqual(b, a, "the step after, model vs copy");
            ModelInfo model = f.describe("edited-hp");
            ModelInfo copy = f.describe("edited-hp-copy");
            assertEquals(copy.getGroupsList(), model.getGroupsList(), "Describe's groups");
            assertEquals(struct("lr", 0.01, "betas", List.of(0.8, 0.95), "eps", 1e-8, "weight_decay", 0.01,
                    "amsgrad", false, "maximize", false, "decoupled_weight_decay", false), model.getDefaults(),
                    "the model's defaults stay its own");

            // A fork carries the edited values (through the capture snapshots use too).
            f.client().fork("edited-hp", "edited-hp-fork", null);
            assertEquals(model.getGroupsList(), f.describe("edited-hp-fork").getGroupsList());
            t.step(grads(5), a);
            f.step("edited-hp-fork", grads(5), b);
            assertBitsEqual(b, a, "the step after forking, model vs fork");
        }
        for (String m : List.of("edited-hp", "edited-hp-copy", "edited-hp-fork")) {
            f.client().delete(m);
        }
    }

    @Test
    void aSyncStepMergesItsContributorsChangesAndRefusesOneThatDoesNotMergeIntoAValidWhole() {
        ModelSpec spec = StandardModel.spec("sync-hp", "SGD", TestData.hp("lr", 0.1, "momentum", 0.9),
                NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED).toBuilder().setCoordination(TestData.sync(2, 0, 0))
                .build();
        f.client().register(spec, StandardModel.tensors(StandardModel.initialWeights(14)));
        Model m = f.model("sync-hp");
        // a switches on Nesterov momentum (valid alone: no dampening); b's dampening would be valid
        // alone too, but torch's SGD refuses Nesterov with dampening: b is refused, a's change waits.
        RawStep a = RawStep.openAs(f.async(), "sync-hp", "a").all(1, grads(1))
                .commit(commit(1, "default", struct("nesterov", true)));
        SidecarFixture.awaitTrue("a's contribution waiting", () -> m.syncContributionsWaiting() == 1);
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.openAs(f.async(), "sync-hp", "b").all(1, grads(1))
                .commit(commit(1, "default", struct("dampening", 0.5))).awaitClose(), "nesterov");
        RawStep b = RawStep.openAs(f.async(), "sync-hp", "b").all(2, grads(2))
                .commit(commit(2, "no_decay", struct("weight_decay", 0.001))).halfClose();
        assertEquals(Status.Code.OK, b.awaitClose().getCode());
        assertEquals(Status.Code.OK, a.halfClose().awaitClose().getCode());
        ModelInfo info = f.describe("sync-hp");
        assertEquals(1, info.getVersion());
        Map<String, Struct> hp = info.getGroupsList().stream().collect(Collectors.toMap(g -> g.getName(),
                g -> g.getHyperparameters()));
        assertEquals(true, hp.get("default").getFieldsOrThrow("nesterov").getBoolValue());
        assertEquals(0.0, hp.get("default").getFieldsOrThrow("dampening").getNumberValue());
        assertEquals(0.001, hp.get("no_decay").getFieldsOrThrow("weight_decay").getNumberValue());
        assertEquals(false, hp.get("no_decay").getFieldsOrThrow("nesterov").getBoolValue());
        f.client().delete("sync-hp");
    }

    private static StepCommit commit(long stepId, String group, Struct change) {
        return StepCommit.newBuilder().setStepId(stepId).setView(View.newBuilder().setKind(ViewKind.VIEW_NONE))
                .putGroupHyperparameters(group, change).build();
    }

    @Test
    void aChangeTheGroupCannotTakeIsRefusedWholeAndChangesNothing() {
        Twins t = Twins.register(f, StandardModel.adamSpec("bad-hp"), 12);
        t.validSteps(1);
        Twins.Snapshot before = t.snapshot();
        float[][] g = grads(2);
        record Bad(String group, Struct change, String... named) {}
        List<Bad> bad = List.of(
                new Bad("default", struct("amsgrad", true), "commit.group_hyperparameters[default]", "state slots"),
                new Bad("default", struct("momentum", 0.9), "commit.group_hyperparameters[default].momentum",
                        "unknown"),
                new Bad("no_decay", struct("betas", List.of(1.5, 0.9)), "commit.group_hyperparameters[no_decay].betas"),
                new Bad("default", struct("eps", -1.0), "commit.group_hyperparameters[default].eps"),
                new Bad("default", struct("lr", "fast"), "commit.group_hyperparameters[default].lr"),
                new Bad("nope", struct("eps", 1e-6), "commit.group_hyperparameters", "'nope'"));
        for (Bad b : bad) {
            assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.open(f.async(), t.model).all(2, g)
                    .commit(commit(2, b.group(), b.change())).awaitClose(), b.named());
        }
        // The same lr in both fields.
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.open(f.async(), t.model).all(2, g)
                .commit(commit(2, "default", struct("lr", 0.1)).toBuilder().putGroupLr("default", 0.2).build())
                .awaitClose(), "commit.group_hyperparameters[default].lr", "group_lr");
        t.assertUnchanged(before);
        t.assertStateMatchesTwin();
        t.delete();

        // SGD's momentum buffer exists only with momentum: it cannot be switched on mid-run.
        ModelSpec sgd = StandardModel.spec("sgd-hp", "SGD", TestData.hp("lr", 0.1),
                NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED);
        Twins s = Twins.register(f, sgd, 13);
        Twins.Snapshot sgdBefore = s.snapshot();
        assertStatus(Status.Code.INVALID_ARGUMENT, RawStep.open(f.async(), s.model).all(1, grads(1))
                .commit(commit(1, "default", struct("momentum", 0.9))).awaitClose(), "momentum_buffer");
        s.assertUnchanged(sgdBefore);
        s.assertStateMatchesTwin();
        s.delete();
    }
}
