"""The evaluation of a generator (paper section 4, "Evaluation Metrics"; docs/RESULTS.md).

The paper follows GauGAN: a segmenter labels each generated image and its prediction is scored
against the input label map (mIoU and pixel accuracy); FID and LPIPS measure the distance between
generated and real images. The parts, from the bottom up:

* :mod:`.metrics`: the metrics as pure functions of tensors (confusion matrix, mIoU, accuracy,
  per-class IoU, Fréchet distance);
* :mod:`.judge`: the segmentation judge (our U-Net trained on the real images, or a pretrained
  segmenter) whose predictions and features the metrics score;
* :mod:`.fid`: FID and LPIPS with the standard pretrained networks, or the reason they are unavailable;
* :mod:`.baseline`: the mean-colour baseline, the floor every metric is shown beside;
* :mod:`.diversity`: how varied a multimodal generator's K samples of one label map are;
* :mod:`.protocol`: the whole protocol on a labelled split (generated, real and baseline images);
* :mod:`.judge_probe`: the same protocol cut down to a few fixed batches, for scoring during sweeps;
* :mod:`.visualize`: the pictures (sample grids, attention maps as in paper Fig. 9, per-class bars).

Networks with side effects (judge, Inception, LPIPS) are loaded by the caller and passed in.
"""
