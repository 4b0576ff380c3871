package dev.optsidecar.server.durability;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.TrainingConfigs;

import java.io.IOException;
import java.nio.file.Path;
import java.util.List;

import static dev.optsidecar.server.durability.SnapshotResumeTest.data;
import static dev.optsidecar.server.durability.SnapshotResumeTest.initial;

/** A durable server and a Schedule-Free RAdam + EMA model trained on it, for restore tests. */
final class DurableRun {
    private DurableRun() {}

    /** A server keeping its state in {@code dir} (5 snapshots, journal written), restoring {@code restore}. */
    static SocketServer start(Path dir, List<String> restore) throws IOException {
        return SocketServer.start("127.0.0.1", 0, 2, 1L << 30,
                new Persistence.Options(dir, 5, StepJournal.Sync.WRITE, 0, null, false), restore);
    }

    static ModelSpec spec(String name) {
        return TrainingConfigs.spec(TrainingConfigs.all().filter(c -> c.name().equals("radam-sf-ema")).findFirst()
                .orElseThrow(), name);
    }

    /** Steps {@code from..to} of the model's gradients, by trainer "t". */
    static void steps(OptSidecarClient client, String model, int from, int to) {
        try (Trainer t = client.trainer(model, "t")) {
            SnapshotResumeTest.steps(t, from, to);
        }
    }

    /**
     * Model "m" snapshotted after step 3 ({@code second}) and step 5 ({@code third}), with steps 6
     * and 7 only in the journal; {@code image} is the state directory as a crash would leave it.
     */
    record SnapshotsAndJournals(SnapshotInfo second, SnapshotInfo third, SnapshotResumeTest.State expected) {
        static SnapshotsAndJournals train(Path live, Path image) throws IOException {
            try (SocketServer s = start(live, List.of());
                 OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
                client.register(spec("m"), data(initial()));
                steps(client, "m", 1, 3);
                SnapshotInfo second = client.snapshot("m");
                steps(client, "m", 4, 5);
                SnapshotInfo third = client.snapshot("m");
                steps(client, "m", 6, 7);
                SnapshotResumeTest.copyTree(live, image);
                return new SnapshotsAndJournals(second, third, SnapshotResumeTest.State.of(client, "m"));
            }
        }
    }
}
