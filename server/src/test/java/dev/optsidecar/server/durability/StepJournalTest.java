package dev.optsidecar.server.durability;

import dev.optsidecar.proto.v1.Contribution;
import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.model.StepRecord;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The journal reads back what was appended, and a torn or corrupt record ends it cleanly. */
class StepJournalTest {
    @TempDir
    Path dir;

    /** A step over tensors of 300 000 (more than one buffer), 5 and 1 elements; the middle one has no gradient. */
    private static StepRecord step(long id) {
        long[] numel = {300_000, 5, 1};
        boolean[] noGrad = {false, true, false};
        List<Contribution> who = List.of(Contribution.newBuilder().setClientId("client-" + id).setStepId(id).build(),
                Contribution.newBuilder().setClientId("other").setStepId(7 * id).build());
        // Every other step sets weights (at the eval point every fourth) and changes more than lr;
        // 0.1 + 0.2 and 1/3 check that doubles come back to the bit.
        boolean setsWeights = id % 2 == 0;
        Struct changes = Struct.newBuilder()
                .putFields("lr", Value.newBuilder().setNumberValue(0.5 / id).build())
                .putFields("betas", Value.newBuilder().setListValue(ListValue.newBuilder()
                        .addValues(Value.newBuilder().setNumberValue(0.1 + 0.2))
                        .addValues(Value.newBuilder().setNumberValue(1.0 / 3))).build())
                .putFields("amsgrad", Value.newBuilder().setBoolValue(id == 3).build()).build();
        return new StepRecord(who, id - 1, setsWeights ? StepKind.STEP_SET_WEIGHTS : StepKind.STEP_GRADIENT,
                id % 4 == 0 ? ViewKind.VIEW_EVAL : ViewKind.VIEW_TRAIN, noGrad,
                id == 1 ? Map.of("default", changes) : Map.of("default", changes, "head", Struct.getDefaultInstance()),
                1.25 * id, 1.0 / id, id - 1,
                new StepRecord.Gradients() {
                    @Override
                    public long numel(int tensor) {
                        return numel[tensor];
                    }

                    @Override
                    public void read(int tensor, long offset, int count, ByteBuffer dst) {
                        for (int i = 0; i < count; i++) {
                            dst.putFloat((float) (id * 1000 + tensor * 100 + offset + i));
                        }
                    }
                });
    }

    private static float[] values(StepRecord r, int tensor) {
        int n = (int) r.gradients().numel(tensor);
        ByteBuffer b = ByteBuffer.allocate(n * 4).order(ByteOrder.LITTLE_ENDIAN);
        r.gradients().read(tensor, 0, n, b);
        float[] out = new float[n];
        b.flip().asFloatBuffer().get(out);
        return out;
    }

    private Path write(int steps) throws IOException {
        Path file = JournalFiles.path(dir, "000001");
        try (StepJournal j = StepJournal.create(file, "m", "run-1", "000001", 0, StepJournal.Sync.FSYNC)) {
            for (int i = 1; i <= steps; i++) {
                j.append(step(i));
            }
        }
        return file;
    }

    private static List<StepRecord> readAll(Path file, String[] problem) throws IOException {
        List<StepRecord> out = new ArrayList<>();
        try (JournalReader r = JournalReader.open(file)) {
            assertEquals("run-1", r.run());
            StepRecord s;
            while ((s = r.next()) != null) {
                out.add(s);
                values(s, 0); // read while the file is open
            }
            problem[0] = r.problem();
        }
        return out;
    }

    @Test
    void recordsComeBackExactly() throws IOException {
        Path file = write(3);
        try (JournalReader r = JournalReader.open(file)) {
            for (int i = 1; i <= 3; i++) {
                StepRecord got = r.next();
                StepRecord sent = step(i);
                assertEquals(sent.contributions(), got.contributions());
                assertEquals(sent.lrScale(), got.lrScale());
                assertEquals(sent.staleness(), got.staleness());
                assertEquals(sent.versionBefore(), got.versionBefore());
                assertArrayEquals(sent.noGrad(), got.noGrad());
                assertEquals(sent.groupChanges(), got.groupChanges());
                assertEquals(sent.kind(), got.kind());
                assertEquals(sent.weightsView(), got.weightsView());
                assertEquals(sent.sumOfSquares(), got.sumOfSquares());
                assertArrayEquals(values(sent, 0), values(got, 0));
                assertArrayEquals(values(sent, 2), values(got, 2));
            }
            assertNull(r.next());
            assertNull(r.problem());
        }
    }

    @Test
    void aRecordCutShortEndsTheJournalBeforeIt() throws IOException {
        Path file = write(3);
        long size = Files.size(file);
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            f.setLength(size - 1000); // the third record was being written when the process died
        }
        String[] problem = new String[1];
        assertEquals(2, readAll(file, problem).size());
        assertNotNull(problem[0]);
        assertTrue(problem[0].contains("truncated"), problem[0]);
    }

    @Test
    void aFlippedByteFailsTheChecksum() throws IOException {
        Path file = write(3);
        long size = Files.size(file);
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            long at = size - 600_000; // inside the third record's gradients
            f.seek(at);
            int b = f.read();
            f.seek(at);
            f.write(b ^ 1);
        }
        String[] problem = new String[1];
        assertEquals(2, readAll(file, problem).size());
        assertTrue(problem[0].contains("checksum"), problem[0]);
    }
}
