package dev.optsidecar.server.durability;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.StandardModel;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.model.StepRecord;
import dev.optsidecar.server.snapshot.SnapshotStore;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A journal record that passes its checksum but cannot be applied (written by another version, or
 * crafted) never stops the server: the model restores to the version before it, a warning names
 * the model, the journal and the step, and every model is served.
 */
class JournalReplayFailureTest {
    @TempDir
    Path tmp;

    private static ModelSpec spec(String name) {
        return ModelSpec.newBuilder().setName(name).addTensors(StandardModel.tensor("w", 4))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD").setHyperparameters(struct("lr", 0.1)))
                .build();
    }

    private static void steps(OptSidecarClient client, String model, int n) {
        try (Trainer t = client.trainer(model, "t")) {
            for (int k = 1; k <= n; k++) {
                t.step(List.of(TensorData.of(new float[]{k, 1, 2, 3})), List.of(TensorData.of(new float[4])));
            }
        }
    }

    private static Map<String, Struct> lrChanges(Map<String, Double> groupLr) {
        Map<String, Struct> out = new java.util.LinkedHashMap<>();
        groupLr.forEach((g, lr) -> out.put(g, Struct.newBuilder()
                .putFields("lr", Value.newBuilder().setNumberValue(lr).build()).build()));
        return out;
    }

    /** A step record applied to {@code versionBefore}, with a gradient of {@code numel} elements. */
    private static StepRecord record(long versionBefore, long numel, Map<String, Double> groupLr) {
        return new StepRecord(List.of(Contribution.newBuilder().setClientId("t").setStepId(100 + versionBefore).build()),
                versionBefore, StepKind.STEP_GRADIENT, ViewKind.VIEW_TRAIN, new boolean[]{false}, lrChanges(groupLr),
                1.0, 1.0, 0, new StepRecord.Gradients() {
                    @Override
                    public long numel(int tensor) {
                        return numel;
                    }

                    @Override
                    public void read(int tensor, long offset, int count, ByteBuffer dst) {
                        for (int i = 0; i < count; i++) {
                            dst.putFloat(1f);
                        }
                    }
                });
    }

    /** Appends {@code records}, with valid checksums, to the model's newest journal. */
    private static void appendToJournal(Path stateDir, String model, StepRecord... records) throws IOException {
        Path modelDir = new SnapshotStore(stateDir, 3).modelDir(model);
        List<JournalFiles.Journal> journals = JournalFiles.list(modelDir);
        Path journal = journals.get(journals.size() - 1).file();
        String run;
        try (JournalReader r = JournalReader.open(journal)) {
            run = r.run();
        }
        Path scratch = stateDir.resolve("scratch.log");
        long header;
        try (StepJournal j = StepJournal.create(scratch, model, run, "000001", 0, StepJournal.Sync.WRITE)) {
            header = j.size();
            for (StepRecord r : records) {
                j.append(r);
            }
        }
        byte[] bytes = Files.readAllBytes(scratch);
        Files.delete(scratch);
        Files.write(journal, java.util.Arrays.copyOfRange(bytes, (int) header, bytes.length), StandardOpenOption.APPEND);
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"unknown group", "wrong element count"})
    void aRecordThatCannotBeAppliedStopsTheModelAtTheLastGoodVersion(String fault) throws Exception {
        Path live = tmp.resolve("live");
        Path image = tmp.resolve("image");
        try (SocketServer a = SnapshotResumeTest.start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + a.port())) {
            client.register(spec("bad"), List.of(TensorData.of(new float[]{1, 2, 3, 4})));
            client.register(spec("good"), List.of(TensorData.of(new float[]{1, 2, 3, 4})));
            steps(client, "bad", 3);
            steps(client, "good", 2);
            a.server().persistence().awaitBackgroundSnapshots();
            SnapshotResumeTest.copyTree(live, image); // the disk as a crash leaves it: steps in the journals
        }
        StepRecord bad = fault.equals("unknown group") ? record(3, 4, Map.of("nope", 0.1)) : record(3, 5, Map.of());
        appendToJournal(image, "bad", bad, record(4, 4, Map.of()));

        List<String> warnings = new ArrayList<>();
        Handler capture = new Handler() {
            @Override
            public void publish(LogRecord r) {
                if (r.getLevel().intValue() >= Level.WARNING.intValue()) {
                    synchronized (warnings) {
                        warnings.add(r.getMessage());
                    }
                }
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        Logger log = Logger.getLogger(Persistence.class.getName());
        log.addHandler(capture);
        try (SocketServer b = SnapshotResumeTest.start(image, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + b.port())) {
            assertEquals(3, client.describe("bad").getVersion());
            assertEquals(2, client.describe("good").getVersion());
            String warning;
            synchronized (warnings) {
                warning = warnings.stream().filter(w -> w.contains("'bad'")).findFirst().orElse("none: " + warnings);
            }
            assertTrue(warning.contains("journal-") && warning.contains("version 4")
                    && warning.contains("stays at version 3"), warning);
            // The model steps on from its last good version, and so does the other.
            try (Trainer t = client.trainer("bad", "after")) {
                assertEquals(4, t.step(List.of(TensorData.of(new float[4])), List.of(TensorData.of(new float[4]))).getVersion());
            }
            try (Trainer t = client.trainer("good", "after")) {
                assertEquals(3, t.step(List.of(TensorData.of(new float[4])), List.of(TensorData.of(new float[4]))).getVersion());
            }
        } finally {
            log.removeHandler(capture);
        }
    }
}
