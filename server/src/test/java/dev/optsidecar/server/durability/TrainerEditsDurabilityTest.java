package dev.optsidecar.server.durability;

import com.google.protobuf.Value;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.TestData;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static dev.optsidecar.server.durability.SnapshotResumeTest.blanks;
import static dev.optsidecar.server.durability.SnapshotResumeTest.copyTree;
import static dev.optsidecar.server.durability.SnapshotResumeTest.data;
import static dev.optsidecar.server.durability.SnapshotResumeTest.grads;
import static dev.optsidecar.server.durability.SnapshotResumeTest.initial;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * What a trainer changes besides gradients (weights it sets, hyperparameters it edits between
 * steps) is snapshotted and journaled like any step: a crash image restores to exactly the state
 * of the uninterrupted run, and the edited hyperparameters are the ones Describe reports.
 */
class TrainerEditsDurabilityTest {
    @TempDir
    Path live;
    @TempDir
    Path image;

    @Test
    void setWeightsAndHyperparameterChangesComeBackFromSnapshotAndJournal() throws IOException {
        SnapshotResumeTest.State uninterrupted;
        try (SocketServer s = DurableRun.start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(DurableRun.spec("m"), data(initial()));
            String group = client.describe("m").getGroups(0).getName();
            try (Trainer t = client.trainer("m", "t")) {
                SnapshotResumeTest.steps(t, 1, 2);
                t.step(data(grads(3)), data(blanks()), new Trainer.StepOptions()
                        .hyperparameter(group, "weight_decay", 0.05)
                        .hyperparameter(group, "betas", new double[] {0.8, 0.99}));
                client.snapshot("m"); // holds the changed hyperparameters
                // Only in the journal from here on: weights set at the train point, a change with a
                // step, weights set at Schedule-Free's eval point, and plain steps after them.
                StepResult set = t.setWeights(someTensors(11));
                assertEquals(StepKind.STEP_SET_WEIGHTS, set.getKind());
                assertEquals(4, set.getVersion());
                t.step(data(grads(4)), data(blanks()), new Trainer.StepOptions().hyperparameter(group, "eps", 1e-6));
                t.setWeights(someTensors(12), new Trainer.StepOptions().weightsView(ViewKind.VIEW_EVAL));
                SnapshotResumeTest.steps(t, 5, 6);
            }
            copyTree(live, image); // what the disk holds if the server dies now
            uninterrupted = SnapshotResumeTest.State.of(client, "m");
        }
        assertEquals(8, uninterrupted.info().getVersion());

        try (SocketServer r = DurableRun.start(image, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + r.port())) {
            SnapshotResumeTest.State restored = SnapshotResumeTest.State.of(client, "m");
            uninterrupted.assertSame(restored, "restored from the crash image");
            ModelInfo info = restored.info();
            var hp = info.getGroups(0).getHyperparameters().getFieldsMap();
            assertEquals(0.05, hp.get("weight_decay").getNumberValue());
            assertEquals(1e-6, hp.get("eps").getNumberValue());
            assertEquals(List.of(0.8, 0.99), hp.get("betas").getListValue().getValuesList().stream()
                    .map(Value::getNumberValue).toList());
            assertEquals(info.getGroups(0).getHyperparameters(), info.getState().getGroups(0).getHyperparameters());
        }
    }

    /** New weights for the first and last tensors; the middle one keeps its own. */
    private static List<TensorData> someTensors(long seed) {
        List<float[]> init = initial();
        List<TensorData> out = new ArrayList<>();
        for (int i = 0; i < init.size(); i++) {
            out.add(i == 1 ? null : TensorData.of(TestData.random(init.get(i).length, seed * 100 + i)));
        }
        return out;
    }
}
