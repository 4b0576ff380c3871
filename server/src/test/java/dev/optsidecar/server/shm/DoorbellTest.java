package dev.optsidecar.server.shm;

import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.ErrorInfo;
import dev.optsidecar.proto.v1.DoorbellFrame;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.SharedSegment;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import io.grpc.Status;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import static dev.optsidecar.server.StandardModel.SIZES;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.tensors;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The doorbell socket against the real server: commits over it give what commits on the stream
 * give, bit for bit; an error ends the doorbell and the stream with one status; a connection
 * needs an open stream's secret, may not take a stream that has a doorbell, and the connections
 * that have not named a stream yet are bounded.
 */
class DoorbellTest {
    private static Path dir;
    private static SidecarFixture f;
    private static final AtomicInteger SEQ = new AtomicInteger();
    private static final SecureRandom RANDOM = new SecureRandom();

    @BeforeAll
    static void start() throws IOException {
        dir = Files.createTempDirectory("doorbell-test");
        f = SidecarFixture.inProcess().sharedMemory(dir).start();
    }

    @AfterAll
    static void stop() throws IOException {
        f.close();
        try (var files = Files.list(dir)) {
            for (Path p : files.toList()) {
                assertFalse(p.getFileName().toString().startsWith("doorbell-"), "the socket outlived the server");
                Files.deleteIfExists(p); // the tests' segments
            }
        }
        Files.deleteIfExists(dir);
    }

    private static Path socket() {
        return dir.resolve(f.blocking().serverInfo(ServerInfoRequest.getDefaultInstance()).getDoorbellSocket());
    }

    private static String register() {
        String name = "bell-" + SEQ.incrementAndGet();
        f.client().register(StandardModel.adamSpec(name), tensors(initialWeights(7)));
        return name;
    }

    private static TestSegment segment() throws IOException {
        return new TestSegment(dir, "optsidecar-bell-" + SEQ.incrementAndGet(), SIZES);
    }

    private static ByteString secret() {
        byte[] bytes = new byte[32];
        RANDOM.nextBytes(bytes);
        return ByteString.copyFrom(bytes);
    }

    private static RawStep open(String model, SharedSegment shared, ByteString secret) {
        return RawStep.start(f.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel(model)
                .setClientId("trainer-" + SEQ.incrementAndGet())
                .setShared(shared).setDoorbellSecret(secret)).build());
    }

    private static StepCommit commit(long stepId) {
        return StepCommit.newBuilder().setStepId(stepId).setView(View.newBuilder().setKind(ViewKind.VIEW_TRAIN)).build();
    }

    /** A client end of the doorbell: whole frames out, whole frames in (null at end of stream). */
    private static final class Line implements AutoCloseable {
        final SocketChannel channel;

        Line() throws IOException {
            channel = SocketChannel.open(UnixDomainSocketAddress.of(socket()));
        }

        Line send(DoorbellFrame frame) throws IOException {
            byte[] body = frame.toByteArray();
            return raw(ByteBuffer.allocate(4 + body.length).order(ByteOrder.LITTLE_ENDIAN).putInt(body.length).put(body)
                    .flip());
        }

        Line raw(ByteBuffer bytes) throws IOException {
            while (bytes.hasRemaining()) {
                channel.write(bytes);
            }
            return this;
        }

        DoorbellFrame read() throws Exception {
            return CompletableFuture.supplyAsync(() -> {
                try {
                    ByteBuffer length = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN);
                    if (!fill(length)) {
                        return null;
                    }
                    ByteBuffer body = ByteBuffer.allocate(length.flip().getInt());
                    assertTrue(fill(body), "the frame was cut short");
                    return DoorbellFrame.parseFrom(body.flip());
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            }).get(30, TimeUnit.SECONDS);
        }

        private boolean fill(ByteBuffer buffer) throws IOException {
            while (buffer.hasRemaining()) {
                if (channel.read(buffer) < 0) {
                    return false;
                }
            }
            return true;
        }

        /** Sends the secret and expects {@code attached}. */
        Line attach(ByteString secret) throws Exception {
            send(DoorbellFrame.newBuilder().setSecret(secret).build());
            DoorbellFrame answer = read();
            assertTrue(answer.getAttached(), () -> "not attached: " + answer);
            return this;
        }

        StepResult step(long stepId) throws Exception {
            send(DoorbellFrame.newBuilder().setCommit(commit(stepId)).build());
            DoorbellFrame answer = read();
            assertTrue(answer.hasResult(), () -> "no result for step " + stepId + ": " + answer);
            return answer.getResult();
        }

        @Override
        public void close() throws IOException {
            channel.close();
        }
    }

    private static ErrorInfo errorInfo(DoorbellFrame frame) throws InvalidProtocolBufferException {
        var status = com.google.rpc.Status.parseFrom(frame.getError().getStatusDetails());
        return status.getDetails(0).unpack(ErrorInfo.class);
    }

    @Test
    void commitsOverTheDoorbellMatchCommitsOnTheStreamBitForBit() throws Exception {
        String viaChunks = register();
        String viaDoorbell = register();
        ByteString secret = secret();
        try (TestSegment seg = segment()) {
            RawStep s = open(viaDoorbell, seg.message, secret);
            try (Line line = new Line().attach(secret)) {
                for (int k = 1; k <= 3; k++) {
                    float[][] expected = StandardModel.zeros();
                    StepResult viaChunksResult = f.step(viaChunks, grads(k), expected);
                    seg.putGradients(grads(k));
                    StepResult r = line.step(k);
                    assertEquals(k, r.getStepId());
                    assertEquals(k, r.getVersion());
                    assertTrue(r.getWeightsInSegment());
                    assertEquals(Double.doubleToRawLongBits(viaChunksResult.getGradNorm()),
                            Double.doubleToRawLongBits(r.getGradNorm()), "gradient norm, step " + k);
                    assertBitsEqual(expected, seg.weights(), "weights written into the segment, step " + k);
                }
                // A retried commit is answered from the ledger, on the doorbell as on the stream.
                assertTrue(line.step(3).getReplayed());
                assertEquals(List.of(), s.responses, "results went to the stream instead of the doorbell");
                s.halfClose();
                assertEquals(Status.Code.OK, s.awaitClose().getCode());
                assertNull(line.read(), "the stream's end did not end its doorbell");
            }
        }
    }

    @Test
    void aResultGoesBackTheWayItsCommitCame() throws Exception {
        String model = register();
        ByteString secret = secret();
        try (TestSegment seg = segment()) {
            seg.putGradients(grads(1));
            RawStep s = open(model, seg.message, secret);
            try (Line line = new Line().attach(secret)) {
                assertEquals(1, line.step(1).getVersion());
                s.commit(commit(2)); // on the stream, with the doorbell attached
                SidecarFixture.awaitTrue("the stream's result", () -> s.responses.size() == 1 || s.isClosed());
                assertEquals(2, s.responses.get(0).getResult().getVersion());
                assertEquals(3, line.step(3).getVersion());
                assertEquals(1, s.responses.size(), "a doorbell commit's result went to the stream");
            }
            s.cancel();
        }
    }

    @Test
    void anErrorEndsTheDoorbellAndTheStreamWithOneStatus() throws Exception {
        String model = register();
        ByteString secret = secret();
        try (TestSegment seg = segment()) {
            RawStep s = open(model, seg.message, secret);
            try (Line line = new Line().attach(secret)) {
                line.step(1);
                float[][] g = grads(2);
                g[1][3] = Float.NaN;
                seg.putGradients(g);
                line.send(DoorbellFrame.newBuilder().setCommit(commit(2)).build());
                DoorbellFrame answer = line.read();
                assertEquals(Status.Code.INVALID_ARGUMENT.value(), answer.getError().getCode());
                assertTrue(answer.getError().getMessage().contains("non_finite"), answer.getError().getMessage());
                assertEquals("NON_FINITE_GRADIENT", errorInfo(answer).getReason());
                assertEquals("open.shared.gradient_offsets", errorInfo(answer).getMetadataOrThrow("field"));
                assertNull(line.read(), "the doorbell stayed open after its error");
                assertEquals(Status.Code.INVALID_ARGUMENT, s.awaitClose().getCode());
                assertEquals(1, f.describe(model).getVersion(), "the refused step changed the model");
            }
        }
    }

    @Test
    void afterTheSecretOnlyCommitsMayCome() throws Exception {
        String model = register();
        ByteString secret = secret();
        try (TestSegment seg = segment()) {
            RawStep s = open(model, seg.message, secret);
            try (Line line = new Line().attach(secret)) {
                line.send(DoorbellFrame.newBuilder().setSecret(secret).build());
                DoorbellFrame answer = line.read();
                assertEquals(Status.Code.INVALID_ARGUMENT.value(), answer.getError().getCode());
                assertEquals("commit", errorInfo(answer).getMetadataOrThrow("field"));
                assertEquals(Status.Code.INVALID_ARGUMENT, s.awaitClose().getCode());
            }
        }
    }

    @Test
    void aStreamTakesOneDoorbellAndAStrangerNone() throws Exception {
        String model = register();
        ByteString secret = secret();
        try (TestSegment seg = segment()) {
            RawStep s = open(model, seg.message, secret);
            try (Line first = new Line().attach(secret); Line second = new Line()) {
                second.send(DoorbellFrame.newBuilder().setSecret(secret).build());
                DoorbellFrame refused = second.read();
                assertEquals(Status.Code.FAILED_PRECONDITION.value(), refused.getError().getCode());
                assertTrue(refused.getError().getMessage().contains("has a doorbell already"));
                seg.putGradients(grads(1));
                assertEquals(1, first.step(1).getVersion(), "the refusal disturbed the attached doorbell");
            }
            s.cancel();
        }
        // A secret no stream registered: refused once the server has waited for its StepOpen.
        try (Line stranger = new Line()) {
            stranger.send(DoorbellFrame.newBuilder().setSecret(secret()).build());
            DoorbellFrame refused = stranger.read();
            assertEquals(Status.Code.FAILED_PRECONDITION.value(), refused.getError().getCode());
            assertEquals("secret", errorInfo(refused).getMetadataOrThrow("field"));
            assertNull(stranger.read());
        }
    }

    @Test
    void aClientThatReadsNoResultsIsCutOffAndTheServerGoesOn() throws Exception {
        String model = register();
        ByteString secret = secret();
        try (TestSegment seg = segment()) {
            seg.putGradients(grads(1));
            RawStep s = open(model, seg.message, secret);
            Line line = new Line().attach(secret);
            // Commits without reading a result, until the server hangs up: its results fill the
            // socket, it waits for the client to take them, then cuts the line off.
            CompletableFuture<Integer> sent = CompletableFuture.supplyAsync(() -> {
                int k = 0;
                try {
                    while (k < 1_000_000) {
                        k++;
                        line.send(DoorbellFrame.newBuilder().setCommit(StepCommit.newBuilder().setStepId(k)
                                .setView(View.newBuilder().setKind(ViewKind.VIEW_NONE))).build());
                    }
                } catch (IOException hungUp) {
                    // the server closed the line
                }
                return k;
            });
            int commits = sent.get(60, TimeUnit.SECONDS);
            assertTrue(commits < 1_000_000, "the server kept reading commits whose results nobody read");
            int results = 0;
            for (DoorbellFrame frame; (frame = line.read()) != null; ) {
                assertTrue(frame.hasResult(), "a frame that is no result: " + frame.getKindCase());
                results++;
            }
            line.close();
            int sentCommits = commits;
            int received = results;
            assertTrue(received > 0 && received < sentCommits, () -> received + " results for " + sentCommits + " commits");
            // The stream is intact and another trainer steps.
            s.cancel();
            f.step(register(), grads(1), StandardModel.zeros());
        }
    }

    @Test
    void aSecretOfTheWrongLengthIsRefusedAtOpen() throws Exception {
        String model = register();
        try (TestSegment seg = segment()) {
            RawStep s = open(model, seg.message, ByteString.copyFromUtf8("eight..."));
            Status status = s.awaitClose();
            assertEquals(Status.Code.INVALID_ARGUMENT, status.getCode());
            assertTrue(status.getDescription().startsWith("open.doorbell_secret:"), status.getDescription());
        }
    }

    @Test
    void aStreamOfChunksHasNoDoorbell() {
        String model = register();
        RawStep s = RawStep.start(f.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel(model)
                .setDoorbellSecret(secret())).build());
        Status status = s.awaitClose();
        assertEquals(Status.Code.INVALID_ARGUMENT, status.getCode());
        assertTrue(status.getDescription().startsWith("open.doorbell_secret:"), status.getDescription());
    }

    @Test
    void connectionsThatNameNoStreamAreBounded() throws Exception {
        List<Line> silent = new ArrayList<>();
        try {
            for (int i = 0; i < Doorbell.MAX_PENDING; i++) {
                silent.add(new Line());
            }
            try (Line oneTooMany = new Line()) {
                assertNull(oneTooMany.read(), "a connection past the bound was served");
            }
        } finally {
            for (Line line : silent) {
                line.close();
            }
        }
        // The silent ones are gone: a trainer's doorbell attaches again.
        String model = register();
        ByteString secret = secret();
        try (TestSegment seg = segment()) {
            RawStep s = open(model, seg.message, secret);
            SidecarFixture.awaitTrue("pending connections released", () -> {
                try (Line line = new Line()) {
                    line.attach(secret);
                    return true;
                } catch (Throwable e) {
                    return false;
                }
            });
            s.cancel();
        }
    }

    @Test
    void socketsOfServersThatAreGoneAreRemovedAndLiveOnesKept() throws IOException {
        Path other = Files.createTempDirectory("doorbell-stale");
        Path dead = other.resolve("doorbell-00000000000000aa.sock");
        Path live = other.resolve("doorbell-00000000000000bb.sock");
        try (ServerSocketChannel gone = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
             ServerSocketChannel listening = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            gone.bind(UnixDomainSocketAddress.of(dead));
            gone.close(); // the file stays, as after a SIGKILL
            listening.bind(UnixDomainSocketAddress.of(live));
            Files.writeString(other.resolve("doorbell-notes.txt.sock"), "not a socket");
            Doorbell.removeStale(other);
            assertFalse(Files.exists(dead), "the dead server's socket stayed");
            assertTrue(Files.exists(live), "a live server's socket was removed");
            assertTrue(Files.exists(other.resolve("doorbell-notes.txt.sock")), "a file that is no socket was removed");
        } finally {
            try (var files = Files.list(other)) {
                for (Path p : files.toList()) {
                    Files.deleteIfExists(p);
                }
            }
            Files.deleteIfExists(other);
        }
    }
}
