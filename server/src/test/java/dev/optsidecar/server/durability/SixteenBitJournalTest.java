package dev.optsidecar.server.durability;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.WireDtype;
import dev.optsidecar.server.SocketServer;
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
 * Steps sent as bfloat16 and float16 are journaled as the float32 values they were widened to, so a
 * crash image replays them to exactly the state of the uninterrupted run.
 */
class SixteenBitJournalTest {
    @TempDir
    Path live;
    @TempDir
    Path image;

    @Test
    void sixteenBitStepsReplayBitForBit() throws IOException {
        SnapshotResumeTest.State uninterrupted;
        try (SocketServer s = DurableRun.start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(DurableRun.spec("m"), data(initial()));
            try (Trainer t = client.trainer("m", "t", WireDtype.WIRE_BFLOAT16)) {
                SnapshotResumeTest.steps(t, 1, 2);
                client.snapshot("m");
                SnapshotResumeTest.steps(t, 3, 4); // only in the journal from here on
                t.setWeights(newWeights(5));
            }
            try (Trainer t = client.trainer("m", "t", WireDtype.WIRE_FLOAT16)) {
                SnapshotResumeTest.steps(t, 5, 6);
            }
            copyTree(live, image);
            uninterrupted = SnapshotResumeTest.State.of(client, "m");
        }
        assertEquals(7, uninterrupted.info().getVersion());
        try (SocketServer r = DurableRun.start(image, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + r.port())) {
            uninterrupted.assertSame(SnapshotResumeTest.State.of(client, "m"), "restored from the crash image");
        }
    }

    private static List<TensorData> newWeights(long seed) {
        List<TensorData> out = new ArrayList<>();
        for (float[] w : initial()) {
            out.add(TensorData.of(TestData.random(w.length, seed * 100 + out.size())));
        }
        return out;
    }
}
