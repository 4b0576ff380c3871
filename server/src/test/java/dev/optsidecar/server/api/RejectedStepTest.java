package dev.optsidecar.server.api;

import com.google.protobuf.ByteString;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.Twins;
import io.grpc.Status;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BiConsumer;
import java.util.stream.Stream;

import static dev.optsidecar.server.StandardModel.CHUNK_FLOATS;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.le;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Malformed steps sent over a raw Step stream: each gets the documented status naming the field
 * or tensor, and leaves the model exactly as it was: the same weights, version and description,
 * and the same optimizer state, shown by the next valid step matching a twin model's bit for bit.
 *
 * <p>Tensors (see {@link StandardModel}): 0 = {@code w} (300 000 floats, chunks [0, 262144) and
 * [262144, 300000)), 1 = {@code b} (500), 2 = {@code scale} (1).
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class RejectedStepTest {
    private static final long STEP = 100;
    private static final float[] FOUR = {0.5f, -0.25f, 1f, 2f};
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();
    private static final AtomicInteger SEQ = new AtomicInteger();

    /** What a bad step sends (given its gradients), and the status it must end with. */
    record BadStep(BiConsumer<RawStep, float[][]> send, Status.Code code, String... fragments) {}

    private static Arguments bad(String name, BiConsumer<RawStep, float[][]> send, Status.Code code,
                                 String... fragments) {
        return Arguments.of(Named.of(name, new BadStep(send, code, fragments)));
    }

    private static StepCommit.Builder commit() {
        return StepCommit.newBuilder().setStepId(STEP);
    }

    static Stream<Arguments> badSteps() {
        Status.Code invalid = Status.Code.INVALID_ARGUMENT;
        Status.Code precondition = Status.Code.FAILED_PRECONDITION;
        return Stream.of(
                // --- chunk addressing and size -------------------------------------------------
                bad("tensor index out of range", (s, g) -> s.tensor(STEP, g, 0).chunk(STEP, 3, 0, le(FOUR, 0, 4)),
                        invalid, "chunk.tensor", "index 3", "3 tensors"),
                bad("tensor index 2^32-1 (uint32)", (s, g) -> s.chunk(STEP, -1, 0, le(FOUR, 0, 4)),
                        invalid, "chunk.tensor", "4294967295"),
                bad("offset past the end of a small tensor", (s, g) -> s.chunk(STEP, 1, 498, le(FOUR, 0, 4)),
                        invalid, "chunk.offset", "'b'", "[498, 502)"),
                bad("second chunk of a multi-chunk tensor one element too long", (s, g) -> s
                                .chunk(STEP, 0, 0, le(g[0], 0, CHUNK_FLOATS))
                                .chunk(STEP, 0, CHUNK_FLOATS, le(new float[300_000 - CHUNK_FLOATS + 1], 0,
                                        300_000 - CHUNK_FLOATS + 1)),
                        invalid, "chunk.offset", "'w'", "[262144, 300001)"),
                bad("offset 2^64-8 (uint64)", (s, g) -> s.chunk(STEP, 2, -8L, le(FOUR, 0, 1)),
                        invalid, "chunk.offset", "'scale'", "18446744073709551608"),
                bad("data not a multiple of 4 bytes", (s, g) -> s.chunk(STEP, 1, 0, ByteString.copyFrom(new byte[10])),
                        invalid, "chunk.data", "'b'", "10 bytes"),
                bad("empty data", (s, g) -> s.chunk(STEP, 2, 0, ByteString.EMPTY),
                        invalid, "chunk.data", "'scale'", "0 bytes"),
                bad("chunk over 1 MiB", (s, g) -> s.chunk(STEP, 0, 0, le(g[0], 0, CHUNK_FLOATS + 1)),
                        invalid, "chunk.data", "'w'", "1048580 bytes"),
                // --- overlaps ------------------------------------------------------------------
                bad("overlapping chunks", (s, g) -> s
                                .chunk(STEP, 0, 0, le(g[0], 0, CHUNK_FLOATS))
                                .chunk(STEP, 0, 262_000, le(g[0], 262_000, 1000)),
                        invalid, "'w'", "overlap", "[262000, 263000)"),
                bad("duplicate chunk", (s, g) -> s.tensor(STEP, g, 1).tensor(STEP, g, 1),
                        invalid, "'b'", "overlap", "[0, 500)"),
                bad("duplicate chunk after the rest of the step", (s, g) -> s.all(STEP, g).tensor(STEP, g, 2),
                        invalid, "'scale'", "overlap"),
                // --- missing chunks ------------------------------------------------------------
                bad("commit with the second chunk of w missing", (s, g) -> s
                                .chunk(STEP, 0, 0, le(g[0], 0, CHUNK_FLOATS)).tensor(STEP, g, 1).tensor(STEP, g, 2)
                                .commit(STEP, ViewKind.VIEW_TRAIN),
                        precondition, "'w'", "incomplete", "37856 of 300000", "first missing element 262144"),
                bad("commit with the first chunk of w missing", (s, g) -> s
                                .chunk(STEP, 0, CHUNK_FLOATS, le(g[0], CHUNK_FLOATS, 300_000 - CHUNK_FLOATS))
                                .tensor(STEP, g, 1).tensor(STEP, g, 2).commit(STEP, ViewKind.VIEW_TRAIN),
                        precondition, "'w'", "first missing element 0"),
                bad("commit with a whole tensor missing", (s, g) -> s.tensor(STEP, g, 0).tensor(STEP, g, 1)
                                .commit(STEP, ViewKind.VIEW_NONE),
                        precondition, "'scale'", "incomplete"),
                bad("commit with a chunk missing and a group_lr change", (s, g) -> s.tensor(STEP, g, 0).tensor(STEP, g, 2)
                                .commit(commit().putGroupLr("default", 0.5).putGroupLr("no_decay", 0.25).build()),
                        precondition, "'b'", "incomplete"),
                bad("commit with no chunks at all", (s, g) -> s.commit(STEP, ViewKind.VIEW_TRAIN),
                        precondition, "'w'", "incomplete"),
                // --- step ids ------------------------------------------------------------------
                bad("chunk of another step before the commit", (s, g) -> s.tensor(STEP, g, 0).tensor(STEP + 1, g, 1),
                        precondition, "chunk.step_id", "101", "100"),
                bad("commit for another step", (s, g) -> s.all(STEP, g).commit(STEP + 1, ViewKind.VIEW_TRAIN),
                        precondition, "commit.step_id", "101", "100"),
                // --- views ---------------------------------------------------------------------
                bad("eval view from Adam", (s, g) -> s.all(STEP, g).commit(STEP, ViewKind.VIEW_EVAL),
                        invalid, "commit.view", "VIEW_EVAL", "Adam"),
                bad("eval view with a group_lr change", (s, g) -> s.all(STEP, g)
                                .commit(commit().setView(View.newBuilder().setKind(ViewKind.VIEW_EVAL))
                                        .putGroupLr("default", 0.5).build()),
                        invalid, "commit.view", "VIEW_EVAL"),
                bad("EMA view without EMA", (s, g) -> s.all(STEP, g).commit(STEP, ViewKind.VIEW_EMA),
                        invalid, "commit.view", "VIEW_EMA"),
                bad("slow view without Lookahead", (s, g) -> s.all(STEP, g).commit(STEP, ViewKind.VIEW_SLOW),
                        invalid, "commit.view", "VIEW_SLOW"),
                bad("view kind the protocol does not know", (s, g) -> s.all(STEP, g)
                                .commit(commit().setView(View.newBuilder().setKindValue(42)).build()),
                        invalid, "commit.view"),
                // --- commit fields -------------------------------------------------------------
                bad("no_grad index out of range", (s, g) -> s.tensor(STEP, g, 0).tensor(STEP, g, 1)
                                .commit(commit().addNoGrad(2).addNoGrad(7).build()),
                        invalid, "commit.no_grad", "7"),
                bad("no_grad names a tensor whose gradient was sent", (s, g) -> s.all(STEP, g)
                                .commit(commit().addNoGrad(1).build()),
                        invalid, "commit.no_grad", "'b'"),
                bad("group_lr for an unknown group", (s, g) -> s.all(STEP, g)
                                .commit(commit().putGroupLr("nope", 0.1).build()),
                        invalid, "commit.group_lr", "'nope'"),
                bad("negative group_lr", (s, g) -> s.all(STEP, g)
                                .commit(commit().putGroupLr("no_decay", 0.1).putGroupLr("default", -0.1).build()),
                        invalid, "commit.group_lr[default]"),
                bad("NaN group_lr", (s, g) -> s.all(STEP, g)
                                .commit(commit().putGroupLr("no_decay", Double.NaN).build()),
                        invalid, "commit.group_lr[no_decay]"),
                bad("infinite group_lr", (s, g) -> s.all(STEP, g)
                                .commit(commit().putGroupLr("default", Double.POSITIVE_INFINITY).build()),
                        invalid, "commit.group_lr[default]"),
                // --- message kinds -------------------------------------------------------------
                bad("empty StepRequest midway", (s, g) -> s.tensor(STEP, g, 0).send(StepRequest.getDefaultInstance()),
                        invalid, "kind"),
                bad("second StepOpen midway", (s, g) -> s.tensor(STEP, g, 0)
                                .send(StepRequest.newBuilder().setOpen(
                                        dev.optsidecar.proto.v1.StepOpen.newBuilder().setModel("x")).build()),
                        invalid, "open", "twice"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("badSteps")
    void rejectedStepChangesNothing(BadStep bad) {
        Twins t = Twins.register(f, StandardModel.adamSpec("rejected-" + SEQ.incrementAndGet()), 11).validSteps(2);
        Twins.Snapshot before = t.snapshot();

        RawStep s = RawStep.open(f.async(), t.model);
        bad.send().accept(s, StandardModel.grads(77));
        assertStatus(bad.code(), s.awaitClose(), bad.fragments());
        assertTrue(s.responses.isEmpty(), () -> "a rejected step sent back " + s.responses);

        t.assertUnchanged(before);
        t.assertStateMatchesTwin();
        t.delete();
    }

    /**
     * A stream that completes a valid step and then sends a bad one: the valid step stays, the
     * bad one changes nothing.
     */
    @Test
    void badStepAfterAValidStepOnTheSameStream() {
        Twins t = Twins.register(f, StandardModel.adamSpec("rejected-after-valid"), 12).validSteps(2);
        float[][] g3 = StandardModel.grads(3);

        RawStep s = RawStep.open(f.async(), t.model).all(1, g3).commit(1, ViewKind.VIEW_TRAIN);
        SidecarFixture.awaitTrue("the valid step's result", () -> s.responses.stream().anyMatch(StepResponse::hasResult)
                || s.isClosed());
        assertEquals(3, s.responses.stream().filter(StepResponse::hasResult).findFirst().orElseThrow()
                .getResult().getVersion());
        float[][] twin3 = StandardModel.zeros();
        f.step(t.twin, g3, twin3);
        Twins.Snapshot before = t.snapshot();
        assertBitsEqual(twin3, before.weights(), "model after the valid raw step vs twin");

        s.tensor(2, StandardModel.grads(77), 0).chunk(2, 1, 0, ByteString.copyFrom(new byte[7]));
        assertStatus(Status.Code.INVALID_ARGUMENT, s.awaitClose(), "chunk.data", "'b'", "7 bytes");
        t.assertUnchanged(before);
        // Both have had three valid steps; the twin helper counts two, so align it.
        t.validStepsDoneOutsideHelper(1);
        t.assertStateMatchesTwin();
        t.delete();
    }

    /**
     * A chunk message over the server's 4 MiB message limit never reaches the service: gRPC
     * itself ends the call with RESOURCE_EXHAUSTED. The half-assembled step is dropped all the same.
     * The limit is the socket transport's (in-process calls pass messages without a size), so this
     * one runs on a socket.
     */
    @Test
    void messageOverTheTransportLimitChangesNothing() throws Exception {
        try (SidecarFixture socket = SidecarFixture.onSocket().start()) {
            Twins t = Twins.register(socket, StandardModel.adamSpec("rejected-oversized"), 13).validSteps(2);
            Twins.Snapshot before = t.snapshot();
            float[][] g = StandardModel.grads(78);
            RawStep s = RawStep.open(socket.async(), t.model).tensor(STEP, g, 1)
                    .chunk(STEP, 0, 0, ByteString.copyFrom(new byte[5 << 20]));
            Status status = s.awaitClose();
            assertEquals(Status.Code.RESOURCE_EXHAUSTED, status.getCode(), () -> "status " + status);
            assertTrue(String.valueOf(status.getDescription()).contains("4194304"), () -> "status " + status);
            t.assertUnchanged(before);
            t.assertStateMatchesTwin(true);
            t.delete();
        }
    }

    @Test
    @Order(Integer.MAX_VALUE)
    void serverSurvivesAllOfTheAbove() {
        f.assertServerHealthy("rejected-step-health");
    }
}
