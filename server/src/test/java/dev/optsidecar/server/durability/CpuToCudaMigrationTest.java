package dev.optsidecar.server.durability;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.ListenAddress;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.TrainingConfigs;
import dev.optsidecar.server.engine.cuda.EmulatedCuda;
import dev.optsidecar.server.model.Limits;
import dev.optsidecar.server.shm.SharedMemory;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.nio.file.Path;
import java.util.List;

import static dev.optsidecar.server.durability.SnapshotResumeTest.copyTree;
import static dev.optsidecar.server.durability.SnapshotResumeTest.data;
import static dev.optsidecar.server.durability.SnapshotResumeTest.initial;
import static dev.optsidecar.server.durability.SnapshotResumeTest.steps;

/**
 * A snapshot and a journal written on the CPU engine resume on the CUDA engine (its Java side over
 * the CPU emulation of the device, with the real per-element arithmetic) and continue bit for bit
 * like the uninterrupted CPU run, for every algorithm and wrapper: both engines give the
 * reference's bits, and the journal carries the gradient norm it used.
 */
class CpuToCudaMigrationTest {
    private static final int SNAPSHOT_AFTER = SnapshotResumeTest.SNAPSHOT_AFTER;
    private static final int STEPS = SnapshotResumeTest.STEPS;

    @TempDir
    Path tmp;

    private static SocketServer startOnCuda(Path dir, List<String> restore) throws Exception {
        return SocketServer.start(List.of(new ListenAddress.Tcp("127.0.0.1", 0)), SocketServer.Exposure.PLAINTEXT,
                EmulatedCuda.open(1L << 30), 1L << 30,
                new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, false), restore, Limits.DEFAULTS,
                SharedMemory.off());
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.optsidecar.server.TrainingConfigs#all")
    void cpuSnapshotsAndJournalsContinueBitForBitOnCuda(TrainingConfigs.Config c) throws Exception {
        Path live = tmp.resolve("live");
        Path crashImage = tmp.resolve("crash-image");
        String name = "migrate-" + c.name();
        ModelSpec spec = TrainingConfigs.spec(c, name);
        SnapshotResumeTest.State uninterrupted;
        SnapshotInfo snap;
        try (SocketServer cpu = SnapshotResumeTest.start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + cpu.port())) {
            client.register(spec, data(initial()));
            try (Trainer t = client.trainer(name, "trainer")) {
                steps(t, 1, SNAPSHOT_AFTER);
                snap = client.snapshot(name);
                steps(t, SNAPSHOT_AFTER + 1, STEPS);
            }
            cpu.server().persistence().awaitBackgroundSnapshots();
            copyTree(live, crashImage);
            uninterrupted = SnapshotResumeTest.State.of(client, name);
        }
        try (SocketServer cuda = startOnCuda(live, List.of(name + "@" + snap.getId()));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + cuda.port())) {
            try (Trainer t = client.trainer(name, "another-trainer")) {
                steps(t, SNAPSHOT_AFTER + 1, STEPS);
            }
            uninterrupted.assertSame(SnapshotResumeTest.State.of(client, name),
                    "CPU snapshot " + snap.getId() + " continued on CUDA");
        }
        try (SocketServer cuda = startOnCuda(crashImage, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + cuda.port())) {
            uninterrupted.assertSame(SnapshotResumeTest.State.of(client, name), "CPU journal replayed on CUDA");
        }
    }
}
