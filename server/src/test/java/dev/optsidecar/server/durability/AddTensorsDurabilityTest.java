package dev.optsidecar.server.durability;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.FullState;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static dev.optsidecar.server.durability.SnapshotResumeTest.copyTree;
import static dev.optsidecar.server.durability.SnapshotResumeTest.data;
import static dev.optsidecar.server.durability.SnapshotResumeTest.initial;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * With --state-dir, a model that gained tensors is snapshotted before the AddTensors is answered,
 * so a crash right after it, or after further journaled steps, restores the extended model exactly.
 */
class AddTensorsDurabilityTest {
    @TempDir
    Path dir;

    /** Steps {@code from..to} with a gradient for each of the model's {@code sizes}. */
    private static void steps(OptSidecarClient client, long[] sizes, int from, int to) {
        try (Trainer t = client.trainer("m", "t")) {
            for (int step = from; step <= to; step++) {
                List<float[]> g = new ArrayList<>();
                List<float[]> out = new ArrayList<>();
                for (int i = 0; i < sizes.length; i++) {
                    g.add(TestData.random((int) sizes[i], 1000L * step + i));
                    out.add(new float[(int) sizes[i]]);
                }
                t.step(data(g), data(out));
            }
        }
    }

    @Test
    void aCrashAfterAddTensorsRestoresTheExtendedModel() throws IOException {
        Path live = dir.resolve("live");
        Path rightAfter = dir.resolve("right-after");
        Path later = dir.resolve("later");
        FullState afterAdding;
        FullState afterSteps;
        long[] before = {300_000, 33, 1};
        long[] extended = {300_000, 33, 1, 5};
        try (SocketServer s = DurableRun.start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(DurableRun.spec("m"), data(initial()));
            steps(client, before, 1, 3);
            client.addTensors("m", List.of(StandardModel.tensor("x", 5)), ParamGroup.newBuilder().setName("late")
                    .setHyperparameters(TestData.hp("lr", 0.005)).build(), TestData.data(TestData.random(5, 9)));
            List<SnapshotInfo> snapshots = client.listSnapshots("m");
            SnapshotInfo last = snapshots.get(snapshots.size() - 1);
            assertEquals("add_tensors", last.getTrigger());
            assertEquals(3, last.getVersion());
            copyTree(live, rightAfter); // the state directory as a crash right after the answer leaves it
            afterAdding = FullState.of(client, "m");
            steps(client, extended, 4, 6); // only in the journal after the add_tensors snapshot
            copyTree(live, later);
            afterSteps = FullState.of(client, "m");
        }
        assertRestores(rightAfter, afterAdding, 3);
        assertRestores(later, afterSteps, 6);
    }

    private static void assertRestores(Path image, FullState expected, long version) throws IOException {
        try (SocketServer s = DurableRun.start(image, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            FullState restored = FullState.of(client, "m");
            assertEquals(version, restored.info().getVersion());
            assertEquals(4, restored.info().getTensorsCount());
            expected.assertSame(restored, "restored at version " + version);
            assertEquals(expected.info().getState().getClientsList(), restored.info().getState().getClientsList());
        }
    }
}
