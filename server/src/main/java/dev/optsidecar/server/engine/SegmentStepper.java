package dev.optsidecar.server.engine;

import java.nio.ByteBuffer;
import java.util.List;
import java.util.concurrent.Executor;

/**
 * Runs a whole step straight from a trainer's shared memory, one pass over each element: the
 * gradient is read where the trainer's backward left it, the trainer's weights are checked to be
 * the model's (bit for bit), and the new weights are written back in their place, while the new
 * parameters and optimizer state go into second buffers that replace the tensors' own only once
 * every piece has passed. So nothing is copied in before the step or out after it, and a step that
 * finds a NaN or Inf, or weights the trainer wrote since, changes nothing: the weights the pass
 * had already replaced in the segment are put back, and the caller takes the path that copies.
 *
 * <p>The second buffers hold the tensor's parameters and state slots again ({@link #spareBytes}):
 * an engine allocates them at a tensor's first such step, the caller having reserved the memory,
 * and frees them with the tensor.
 */
public interface SegmentStepper {
    /** Whether every program is one this stepper runs: a single call of a kernel it implements. */
    boolean supports(List<TensorProgram> programs);

    /** Bytes of the second buffers a tensor of {@code numel} elements with {@code slots} state slots needs. */
    long spareBytes(long numel, int slots);

    /** Elements [offset, offset + count) of program {@code program}'s tensor. */
    record Piece(int program, long offset, int count) {}

    /** The segment's bytes for a piece: views of its gradient and of its weights, little-endian float32. */
    interface PieceViews {
        ByteBuffer gradient(Piece piece);

        ByteBuffer weights(Piece piece);
    }

    /**
     * What an applied step leaves: the gradient's sum of squares (added as the copying path adds
     * it, piece by piece in order, so the norm has the same bits) and the CRC-32C of each piece's
     * new weights as written into the segment.
     */
    record Applied(double sumOfSquares, int[] weightsCrc32c) {}

    /**
     * Runs {@code programs} over {@code pieces} (every element of every program's tensor, each
     * piece within one tensor) on up to {@code threads} threads, {@code helpers} running all but
     * the caller's.
     *
     * @return the figures, or null when the step was refused: a weight in the segment differs from
     *         the model's, or a gradient value is NaN or Inf; nothing changed then
     */
    Applied run(List<TensorProgram> programs, List<Piece> pieces, PieceViews views, Executor helpers, int threads);
}
