#!/usr/bin/env bash
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/ctr train --stage 1 --preset cpu-small --steps 100 --batch-size 8 --micro-batch-size 8   --mixing balanced --max-source-len 128 --max-target-len 8 --save-every 50 --resume   --tasks ag_news_classify ag_news_classify_question_first ag_news_classify_with_choices ag_news_classify_with_choices_question_first ag_news_recommend ag_news_which_section ag_news_which_section_choices amazon_polarity_Is_this_product_review_positive amazon_polarity_Is_this_review amazon_polarity_Is_this_review_negative amazon_polarity_User_recommend_this_product amazon_polarity_convey_negative_or_positive_sentiment amazon_polarity_flattering_or_not amazon_polarity_negative_or_positive_tone amazon_polarity_user_satisfied amazon_polarity_would_you_buy  glue_qqp_answer glue_qqp_duplicate glue_qqp_duplicate_or_not glue_qqp_meaning --output-dir runs_i12/s1_cpu
.venv/bin/ctr zero-label --checkpoint runs_i12/s1_cpu --tasks glue_sst2 --n-inputs 16 --max-templates 5   --eval-max-templates 5 --max-examples 200 --output-dir runs_i12/zl_sst2
.venv/bin/ctr eval --model smollm2 --tasks glue_sst2 --max-templates 5 --max-examples 200 --output-dir runs_i12/zs_sst2
echo I12_DONE
