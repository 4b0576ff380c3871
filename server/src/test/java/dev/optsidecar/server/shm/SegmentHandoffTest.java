package dev.optsidecar.server.shm;

import dev.optsidecar.client.UnixCalls;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.util.concurrent.atomic.AtomicInteger;

import static dev.optsidecar.server.StandardModel.SIZES;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.tensors;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The segment socket against the real server: what it refuses (and then holds nothing), that a
 * segment is held exactly while its connection is open or a stream uses it, and that a stream's
 * views land in the memfd.
 */
class SegmentHandoffTest {
    private static Path dir;
    private static SidecarFixture f;
    private static final AtomicInteger SEQ = new AtomicInteger();

    @BeforeAll
    static void start() throws IOException {
        dir = Files.createTempDirectory("handoff-test");
        f = SidecarFixture.inProcess().sharedMemory(dir).start();
    }

    @AfterAll
    static void stop() throws IOException {
        f.close();
        TestSegment.deleteDirectory(dir);
    }

    private static String socket() {
        return dir.resolve(f.blocking().serverInfo(ServerInfoRequest.getDefaultInstance()).getSegmentSocket())
                .toString();
    }

    private static byte[] token() {
        byte[] token = new byte[32];
        new SecureRandom().nextBytes(token);
        return token;
    }

    private static SegmentHandoff handoff() {
        return f.sharedMemory().handoff();
    }

    @Test
    void theSocketIsPrivate() throws IOException {
        assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(Path.of(socket()))));
    }

    @Test
    void anUnsealedMemfdIsRefusedAndNothingIsHeld() {
        int fd = Memfds.create(1 << 16, 0);
        try (Memfds.Handed handed = Memfds.handOver(socket(), fd, token())) {
            assertTrue(handed.reply().getRefused().contains("not sealed against shrinking"), handed.reply().getRefused());
            assertTrue(Memfds.closedByServer(handed.connection()));
        } finally {
            Memfds.close(fd);
        }
        SidecarFixture.awaitTrue("nothing held", () -> handoff().held() == 0);
    }

    @Test
    void aTokenWithoutADescriptorIsRefused() {
        try (Memfds.Handed handed = Memfds.handOver(socket(), -1, token())) {
            assertTrue(handed.reply().getRefused().contains("exactly one file descriptor"), handed.reply().getRefused());
        }
    }

    @Test
    void aSegmentIsHeldWhileItsConnectionIsOpen() {
        int fd = Memfds.create(1 << 16, UnixCalls.F_SEAL_SHRINK);
        Memfds.Handed handed = Memfds.handOver(socket(), fd, token());
        Memfds.close(fd);
        assertEquals("", handed.reply().getRefused());
        SidecarFixture.awaitTrue("held", () -> handoff().held() == 1);
        handed.close();
        SidecarFixture.awaitTrue("released when the connection closed", () -> handoff().held() == 0);
    }

    @Test
    void aStreamKeepsItsSegmentAfterTheConnectionClosesAndWritesViewsIntoIt() throws IOException {
        String model = "handoff-" + SEQ.incrementAndGet();
        f.client().register(StandardModel.adamSpec(model), tensors(initialWeights(7)));
        String viaChunks = "handoff-chunks-" + SEQ.incrementAndGet();
        f.client().register(StandardModel.adamSpec(viaChunks), tensors(initialWeights(7)));
        TestSegment seg = TestSegment.sealed(Path.of(socket()), SIZES);
        try {
            RawStep s = RawStep.start(f.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder()
                    .setModel(model).setClientId("trainer").setShared(seg.message)).build());
            seg.putGradients(grads(1));
            s.commit(1, ViewKind.VIEW_TRAIN);
            assertEquals(1, s.resultWithoutChunks(1).getVersion());
            seg.closeConnection(); // the stream holds the memory still
            SidecarFixture.awaitTrue("no longer held by the connection", () -> handoff().held() == 0);
            seg.putGradients(grads(2));
            s.commit(2, ViewKind.VIEW_TRAIN);
            StepResult second = s.resultWithoutChunks(2);
            assertTrue(second.getWeightsInSegment());
            float[][] expected = StandardModel.zeros();
            f.step(viaChunks, grads(1), StandardModel.zeros());
            f.step(viaChunks, grads(2), expected);
            assertBitsEqual(expected, seg.weights(), "views written into the memfd");
            s.halfClose();
            s.awaitClose();
        } finally {
            seg.close();
        }
    }
}
